<?php
// deploy.php of a Deployer 7 project deploying through switchfs with the deployer-switchfs
// package (dist/deployer-switchfs; README "Deployer and Capistrano"):
//     composer require --dev switchfs/deployer-switchfs
// Each host mounts switchfs at /srv/switchfs/{{application}}, outside the deploy path the
// deploy user owns (started with --releases {{deploy_path}}/releases and --control-group of
// the deploy user; docs/operations.md "Bootstrap"); the first deploy links current to it. `dep deploy` prepares the release on every host, then switches them all at
// one instant; `dep rollback` too. The hosts' clocks must agree (NTP).
namespace Deployer;

require 'recipe/common.php';
require 'vendor/switchfs/deployer-switchfs/contrib/switchfs.php';

set('application', 'shop');     // the mount point: /srv/switchfs/shop (switchfs_mount)
set('repository', 'git@example.com:shop.git');
set('keep_releases', 5);
set('switchfs_lead', 3);          // seconds ahead the fleet's switch instant is

host('web1.example.com', 'web2.example.com')
    ->setRemoteUser('deploy')
    ->setDeployPath('/var/www/shop');
