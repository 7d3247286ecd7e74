# Capistrano tasks: serve `current` through switchfs instead of a symlink.
# Put this file in lib/capistrano/tasks/switchfs.rake (Capistrano loads *.rake there).
# Requires: switchfs running with --releases #{deploy_to}/releases and the mount point at
# #{deploy_to}/current, and the deploy user allowed on its control socket (--control-group).

namespace :deploy do
  namespace :symlink do
    # Capistrano flips `current` here; with switchfs, `current` is the mount point and the
    # flip is an atomic pointer change inside the daemon.
    Rake::Task["deploy:symlink:release"].clear_actions
    task :release do
      on release_roles(:all) do
        execute :switchctl, "--mount", current_path, "activate", release_path.basename.to_s
      end
    end
  end

  # `cap deploy:rollback` ends with the same symlink step, so it goes through switchctl too.

  Rake::Task["deploy:cleanup"].clear_actions
  desc "Delete old releases that nothing uses any more"
  task :cleanup do
    on release_roles(:all) do
      execute :switchctl, "--mount", current_path, "prune", "--keep", fetch(:keep_releases, 5), "--yes"
    end
  end
end
