# Capistrano 3 tasks: serve the site through switchfs instead of flipping a symlink per deploy.
# Put this file in lib/capistrano/tasks/switchfs.rake (Capistrano loads *.rake there).
#
# Layout (README "Deployer and Capistrano"): switchfs is mounted at a fixed directory,
# #{deploy_to}/.switchfs, started with --releases #{deploy_to}/releases; `current` is a
# symlink to it, made once and never changed again, so nothing that resolves `current` ever
# sees it move, and Capistrano's own `readlink current` and `[ -L current ]` keep working.
# Before the first deploy, as root: create releases/ and .switchfs/, start switchfs (see
# docs/operations.md "Bootstrap"), and let the deploy user use its socket (--control-group).
#
# Tasks of lib/capistrano/tasks/deploy.rake replaced here, and why:
# - deploy:symlink:release   flips `current`; here `switchctl activate` (or, in a rollback,
#                            `switchctl rollback --to`, so switchfs marks the release left)
# - deploy:rollback_release_path  picks the second newest by `ls -t`; here the target of
#                            switchfs's activation history (ROLLBACK_RELEASE still wins)
# - deploy:cleanup_rollback  compares `readlink current` with the newest release; here the
#                            release just rolled back from, as switchfs reports it, and never
#                            one that is active or still in use
# - deploy:cleanup           `rm -rf` of the oldest; here `switchctl prune`, which spares the
#                            active and previous release and any release still in use
require "json"

set :switchfs_mount, -> { deploy_path.join(".switchfs") }
# Seconds to wait for the previous release to drain after a switch (0: do not wait).
set :switchfs_wait_drain, 0

def switchctl_args(*args)
  ["--mount", fetch(:switchfs_mount).to_s, *args]
end

def switchfs_status
  JSON.parse(capture(:switchctl, *switchctl_args("status", "--json")))
end

def switchfs_drain_flag
  drain = fetch(:switchfs_wait_drain).to_i
  drain > 0 ? ["--wait-drain=#{drain}"] : []
end

namespace :switchfs do
  desc "Check that switchfs serves the site and that current is the link to its mount"
  task :check do
    on release_roles(:all) do |host|
      mount = Pathname.new(fetch(:switchfs_mount).to_s)
      unless test(:switchctl, *switchctl_args("status"))
        error "switchfs does not answer for #{mount} on #{host}: start it before deploying " \
              "(switchfs --releases #{releases_path} #{mount}; docs/operations.md)"
        exit 1
      end
      if test("[ ! -e #{current_path} ] && [ ! -L #{current_path} ]")
        # First deploy: made once, never flipped again.
        execute :ln, "-s", mount.basename, current_path
      elsif ![mount.basename.to_s, mount.to_s].include?(
        capture("readlink #{current_path} || true").strip
      )
        error "#{current_path} is not a symlink to #{mount}: migrate it first " \
              "(docs/operations.md, \"Migrate from a current symlink\")"
        exit 1
      end
    end
  end
end
after "deploy:check:directories", "switchfs:check"

namespace :deploy do
  namespace :symlink do
    Rake::Task["deploy:symlink:release"].clear_actions
    task :release do
      on release_roles(:all) do
        name = release_path.basename.to_s
        if fetch(:switchfs_rolling_back, false)
          execute :switchctl, *switchctl_args("rollback", "--to", name, *switchfs_drain_flag)
        else
          execute :switchctl, *switchctl_args("activate", name, *switchfs_drain_flag)
        end
      end
    end
  end

  Rake::Task["deploy:rollback_release_path"].clear_actions
  task :rollback_release_path do
    on release_roles(:all) do
      target = ENV["ROLLBACK_RELEASE"] || switchfs_status["rollback_to"]
      if target.nil? || !test("[ -d #{releases_path.join(target)} ]")
        error "no release to roll back to (switchctl --mount #{fetch(:switchfs_mount)} status)"
        exit 1
      end
      set_release_path(target)
      set(:rollback_timestamp, target)
      set(:switchfs_rolling_back, true)
    end
  end

  Rake::Task["deploy:cleanup_rollback"].clear_actions
  desc "Archive and remove the release just rolled back from, unless something still uses it"
  task :cleanup_rollback do
    on release_roles(:all) do
      st = switchfs_status
      left = st["previous"]
      usage = st["releases"].find { |r| r["name"] == left } || {}
      if left.nil? || left == st["active"] || !st["rolled_back"].include?(left)
        debug "no release was rolled back from; skip cleanup_rollback"
      elsif usage["in_use"]
        warn "release #{left} is still in use; kept (switchctl prune deletes it later)"
      else
        execute :tar, "-czf", deploy_path.join("rolled-back-release-#{left}.tar.gz"),
                "-C", releases_path, left
        execute :rm, "-rf", releases_path.join(left)
      end
    end
  end

  Rake::Task["deploy:cleanup"].clear_actions
  desc "Delete old releases that nothing uses any more"
  task :cleanup do
    on release_roles(:all) do
      keep = fetch(:keep_releases, 5).to_i
      if keep > 0
        execute :switchctl, *switchctl_args("prune", "--keep", keep, "--yes")
      else
        info "keep_releases is #{keep}: keeping every release"
      end
    end
  end
end
