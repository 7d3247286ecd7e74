# config/deploy.rb of a Capistrano 3 project deploying through switchfs with the
# capistrano-switchfs gem (dist/capistrano-switchfs; README "Deployer and Capistrano").
#
#   gem build capistrano-switchfs.gemspec && gem install --local capistrano-switchfs-*.gem
#   # Capfile, after require "capistrano/deploy":
#   require "capistrano/switchfs"
#
# Each host mounts switchfs at /srv/switchfs/#{application}, outside the deploy path the
# deploy user owns (started with --releases #{deploy_to}/releases and --control-group of the
# deploy user; docs/operations.md "Bootstrap"); the first deploy links current to it. `cap deploy` prepares the release on every host, then switches them all at one
# instant; `cap deploy:rollback` too. The hosts' clocks must agree (NTP).
set :application, "shop"
set :repo_url, "git@example.com:shop.git"
set :deploy_to, "/var/www/shop"
set :keep_releases, 5

# The gem's settings, with their defaults:
set :switchfs_mount, -> { "/srv/switchfs/#{fetch(:application)}" } # the mount `current` links to
set :switchfs_switchctl, "switchctl"  # path or name on the hosts' PATH
set :switchfs_lead, 2.0               # seconds ahead the fleet's switch instant is
set :switchfs_wait_drain, 0           # seconds to wait for the previous release to drain
set :switchfs_roles, :all             # the hosts switched together
