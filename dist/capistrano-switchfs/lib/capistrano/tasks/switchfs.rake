# Capistrano 3 tasks serving the site through switchfs (README.md of this gem). Loaded by
# `require "capistrano/switchfs"` in the Capfile.
#
# Tasks of capistrano/tasks/deploy.rake replaced here, and why:
# - deploy:symlink:release   flips `current` on each host over ssh, so a fleet flips over the
#                            spread of those ssh commands; here `switchctl prepare` on every
#                            host first (nothing switches unless all can), then `switchctl
#                            activate --at` one instant a moment ahead on all hosts (in a
#                            rollback `rollback --to`, so switchfs marks the release left)
# - deploy:rollback_release_path  picks the second newest by `ls -t`; here the target of
#                            switchfs's activation history, the same on every host
#                            (ROLLBACK_RELEASE still wins)
# - deploy:cleanup_rollback  compares `readlink current` with the newest release; here the
#                            release just rolled back from, as switchfs reports it, and never
#                            one that is active or still in use
# - deploy:cleanup           `rm -rf` of the oldest; here `switchctl prune`, which spares the
#                            active and previous release and any release still in use
include Capistrano::Switchfs::Helpers

namespace :load do
  task :defaults do
    # The switchfs mount `current` links to: /srv/switchfs/<application>, outside the deploy
    # path the deploy user owns (switchfs refuses a mount point below a directory another
    # user owns). And switchctl (a path, or a name on PATH).
    set_if_empty :switchfs_mount, -> { switchfs_default_mount }
    set_if_empty :switchfs_switchctl, "switchctl"
    # The control socket instead of the mount (nil: the one of switchfs_mount).
    set_if_empty :switchfs_control, nil
    # Seconds ahead of the switch command the fleet's instant is: long enough for the
    # command to reach every host (switchctl refuses an instant already past).
    set_if_empty :switchfs_lead, 2.0
    # Seconds to wait for the previous release to drain after a switch (0: do not wait).
    set_if_empty :switchfs_wait_drain, 0
    set_if_empty :switchfs_roles, :all
  end
end

SWITCHFS_LOCK = Mutex.new
SWITCHFS_CAPS = {}
SWITCHFS_PARTIAL = []

namespace :switchfs do
  desc "Check that switchfs serves the site on every host and that current links to its mount"
  task :check do
    problems = []
    on release_roles(fetch(:switchfs_roles)) do |host|
      caps = switchfs_capabilities
      SWITCHFS_LOCK.synchronize { SWITCHFS_CAPS[host.to_s] = caps }
      rc, out = switchfs_ctl("status")
      unless rc.zero?
        SWITCHFS_LOCK.synchronize { problems << switchfs_diagnose(host, out) }
        next
      end
      user = capture(:id, "-un").strip
      mount = Pathname.new(fetch(:switchfs_mount).to_s)
      unless test("[ -w #{deploy_path} ]")
        SWITCHFS_LOCK.synchronize do
          problems << "#{deploy_path} on #{host} is not writable by #{user} (current -> " \
                      "#{mount} cannot be made); as root: chown #{user}: #{deploy_path} " \
                      "#{releases_path} #{shared_path}"
        end
        next
      end
      if test("[ ! -e #{current_path} ] && [ ! -L #{current_path} ]")
        # First deploy: made once, absolute (the mount is outside the deploy path), never
        # flipped again.
        execute :ln, "-s", mount, current_path
      else
        link = capture("readlink #{current_path} || true").strip
        unless switchfs_links_to_mount?(link, mount)
          SWITCHFS_LOCK.synchronize do
            problems << "#{current_path} on #{host} links to #{link.empty? ? 'nothing (not a symlink)' : link}, " \
                        "not to the mount #{mount}; as #{user}: ln -s #{mount} #{current_path}.switchfs && " \
                        "mv -T #{current_path}.switchfs #{current_path} (a site still serving " \
                        "current -> releases/N: docs/operations.md, \"Migrate from a current symlink\")"
          end
        end
      end
    end
    unless problems.empty?
      problems.each { |p| switchfs_log(:error, p) }
      exit 1
    end
  end

  desc "Check on every host that the release can be activated (nothing switches)"
  task :prepare do
    name = release_path.basename.to_s
    refused = []
    on release_roles(fetch(:switchfs_roles)) do |host|
      caps = SWITCHFS_LOCK.synchronize { SWITCHFS_CAPS[host.to_s] ||= switchfs_capabilities }
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      rc, out = if caps.include?("prepare")
                  switchfs_ctl("prepare", name)
                else
                  # Without prepare: the daemon answers and the release is there.
                  r, o = switchfs_ctl("status")
                  r.zero? && !test("[ -d #{releases_path.join(name)} ]") ? [1, "no release #{name}"] : [r, o]
                end
      took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      SWITCHFS_LOCK.synchronize do
        # The slowest host's round: the switch command needs about as long to reach it.
        set(:switchfs_round, [fetch(:switchfs_round, 0.0), took].max)
        refused << "#{host}: #{out.lines.last.to_s.strip}" unless rc.zero?
      end
    end
    unless refused.empty?
      refused.each { |r| switchfs_log(:error, "release #{name} cannot be activated on #{r}") }
      switchfs_log(:error, "nothing was switched")
      exit 1
    end
  end

  desc "Switch every host to the release at one instant (after switchfs:prepare)"
  task :switch do
    name = release_path.basename.to_s
    rolling_back = fetch(:switchfs_rolling_back, false)
    hosts = release_roles(fetch(:switchfs_roles))
    want = rolling_back ? "rollback_at" : "at"
    at_everywhere = hosts.all? { |h| SWITCHFS_CAPS.fetch(h.to_s, []).include?(want) }
    plain = (rolling_back ? ["rollback", "--to", name] : ["activate", name]) + switchfs_drain_flag
    args = plain
    if at_everywhere
      # Never closer than twice the slowest host's prepare round: under load an ssh command
      # takes seconds to arrive, and an instant already past is refused.
      lead = [fetch(:switchfs_lead).to_f, 2 * fetch(:switchfs_round, 0.0)].max
      at = switchfs_instant(lead)
      switchfs_log(:info, "every host switches to #{name} at #{at} (#{format('%.1f', lead)} s ahead)")
      args = plain + ["--at", at]
    else
      switchfs_log(:info, "switchctl has no #{rolling_back ? 'rollback' : 'activate'} --at on " \
                          "every host; each host switches on its own (up to the ssh spread apart)")
    end
    failed = []
    on hosts do |host|
      rc, out = switchfs_ctl(*args)
      if rc == 1 && args != plain
        # Prepared, but refused at the instant (it had passed when the command arrived, say):
        # switching late beats leaving the fleet split between two releases.
        warn "switchfs: #{host} missed the instant (#{out.lines.last.to_s.strip.sub(/^switchctl: /, '')}); " \
             "switching it now"
        rc, out = switchfs_ctl(*plain)
      end
      case rc
      when 0 then info "switchfs: #{host}: #{out.lines.first.to_s.strip}"
      when 3
        msg = "#{host} switched to #{name}, but: #{out.lines.last.to_s.strip.sub(/^switchctl: /, '')}"
        warn "switchfs: #{msg}"
        SWITCHFS_LOCK.synchronize { SWITCHFS_PARTIAL << msg }
      else SWITCHFS_LOCK.synchronize { failed << "#{host}: #{out.lines.last.to_s.strip}" }
      end
    end
    unless failed.empty?
      failed.each { |f| switchfs_log(:error, "switching to #{name} failed on #{f}") }
      exit 1
    end
  end

  task :report do
    SWITCHFS_PARTIAL.each { |msg| switchfs_log(:warn, msg) }
  end
end
after "deploy:check:directories", "switchfs:check"
after "deploy:finished", "switchfs:report"

namespace :deploy do
  namespace :symlink do
    Rake::Task["deploy:symlink:release"].clear_actions
    task :release do
      invoke "switchfs:prepare"
      invoke "switchfs:switch"
    end
  end

  Rake::Task["deploy:rollback_release_path"].clear_actions
  task :rollback_release_path do
    targets = {}
    on release_roles(fetch(:switchfs_roles)) do |host|
      target = ENV["ROLLBACK_RELEASE"] || switchfs_status["rollback_to"]
      target = nil unless target && test("[ -d #{releases_path.join(target)} ]")
      SWITCHFS_LOCK.synchronize { targets[host.to_s] = target }
    end
    if targets.values.include?(nil)
      switchfs_log(:error, "no release to roll back to on #{targets.select { |_, t| t.nil? }.keys.join(', ')} " \
                           "(switchctl --mount #{fetch(:switchfs_mount)} status)")
      exit 1
    elsif targets.values.uniq.size > 1
      switchfs_log(:error, "the hosts would roll back to different releases " \
                           "(#{targets.map { |h, t| "#{h}: #{t}" }.join(', ')}); name one with ROLLBACK_RELEASE")
      exit 1
    end
    target = targets.values.first
    set_release_path(target)
    set(:rollback_timestamp, target)
    set(:switchfs_rolling_back, true)
  end

  Rake::Task["deploy:cleanup_rollback"].clear_actions
  desc "Archive and remove the release just rolled back from, unless something still uses it"
  task :cleanup_rollback do
    on release_roles(:all) do |host|
      st = switchfs_status
      left = st["previous"]
      usage = st["releases"].find { |r| r["name"] == left } || {}
      if left.nil? || left == st["active"] || !st["rolled_back"].include?(left)
        debug "no release was rolled back from; skip cleanup_rollback"
      elsif usage["in_use"]
        warn "switchfs: release #{left} is still in use on #{host}; kept (switchctl prune deletes it later)"
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
        rc, out = switchfs_ctl("prune", "--keep", keep, "--yes")
        raise "switchctl prune: #{out}" unless rc.zero?
      else
        info "keep_releases is #{keep}: keeping every release"
      end
    end
  end
end
