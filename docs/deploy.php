<?php
// Deployer recipe: serve `current` through switchfs instead of a symlink.
// Include it after recipe/common.php (or your framework recipe):
//     require 'contrib/switchfs.php';   // this file, copied into your project
// Requires: switchfs running for {{deploy_path}}/current (see switchfs@.service), and the
// deploy user allowed on its control socket (--control-group).
namespace Deployer;

// The path the web server serves: the switchfs mount point.
set('switchfs_mount', '{{deploy_path}}/current');
// Wait up to this many seconds for the previous release to drain (0: do not wait).
set('switchfs_wait_drain', 0);

desc('Switches the live release with switchctl (replaces the symlink)');
task('deploy:symlink', function () {
    $drain = (int) get('switchfs_wait_drain');
    $flag = $drain > 0 ? " --wait-drain=$drain" : '';
    run("switchctl --mount {{switchfs_mount}} activate {{release_name}}$flag");
});

desc('Rolls back to the previous release with switchctl');
task('rollback', function () {
    run('switchctl --mount {{switchfs_mount}} rollback');
});

// Deployer's cleanup counts entries of releases/; switchctl prune also spares releases
// still in use by a running process.
desc('Deletes old releases that nothing uses any more');
task('deploy:cleanup', function () {
    run('switchctl --mount {{switchfs_mount}} prune --keep {{keep_releases}} --yes');
});
