require "json"
require "shellwords"
require "time"

module Capistrano
  module Switchfs
    # Helpers of the switchfs tasks, mixed into the task context (they call Capistrano's
    # fetch and SSHKit's capture, as code inside `on` blocks does).
    module Helpers
      # Logs a line outside an `on` block (where SSHKit's info/warn/error are not defined).
      def switchfs_log(level, message)
        SSHKit.config.output.send(level, "switchfs: #{message}")
      end

      # The switchctl command line for ARGS, as one shell-quoted string.
      def switchfs_command(*args)
        target = if fetch(:switchfs_control)
                   ["--control", fetch(:switchfs_control).to_s]
                 else
                   ["--mount", fetch(:switchfs_mount).to_s]
                 end
        [fetch(:switchfs_switchctl).to_s, *target, *args].map { |a| Shellwords.escape(a.to_s) }.join(" ")
      end

      # Runs a shell SCRIPT on the current host; [exit status, output (stdout and stderr)].
      # SSHKit's execute says only whether a command failed; switchctl's exit 3 ("switched,
      # but") must be told from a refusal (1), so the status is printed after the output.
      def switchfs_sh(script)
        out = capture(:bash, "-c", Shellwords.escape("#{script} 2>&1; echo \"switchfs-rc=$?\""))
        lines = out.lines
        rc = lines.pop.to_s[/switchfs-rc=(\d+)/, 1]
        [rc ? rc.to_i : 255, lines.join.strip]
      end

      def switchfs_ctl(*args)
        switchfs_sh(switchfs_command(*args))
      end

      def switchfs_status
        rc, out = switchfs_ctl("status", "--json")
        raise "switchctl status: #{out}" unless rc.zero?
        JSON.parse(out)
      end

      def switchfs_drain_flag
        drain = fetch(:switchfs_wait_drain).to_i
        drain > 0 ? ["--wait-drain=#{drain}"] : []
      end

      # What the installed switchctl can do: prepare, activate --at, rollback --at.
      def switchfs_capabilities
        ctl = Shellwords.escape(fetch(:switchfs_switchctl).to_s)
        _, out = switchfs_sh(
          "#{ctl} prepare --help >/dev/null 2>&1 && echo prepare; " \
          "#{ctl} activate --help 2>/dev/null | grep -q -e '--at' && echo at; " \
          "#{ctl} rollback --help 2>/dev/null | grep -q -e '--at' && echo rollback_at; true"
        )
        out.split
      end

      # The instant LEAD seconds from now, as switchctl --at takes it (RFC 3339 UTC, ms).
      def switchfs_instant(lead)
        (Time.now.utc + lead.to_f).strftime("%Y-%m-%dT%H:%M:%S.%LZ")
      end

      # The default mount point: outside the deploy path, in a directory only root can change
      # (switchfs refuses a mount point below one the deploy user owns; README "How it works").
      def switchfs_default_mount
        name = fetch(:application, nil).to_s
        name = deploy_path.basename.to_s if name.empty? || name.include?("/")
        Pathname.new("/srv/switchfs").join(name)
      end

      # The shell walk (the same in deployer-switchfs) that finds the first directory above
      # MOUNT switchfs refuses, as its StrictModes check does: "KIND VALUE DIR", KIND one of
      # link, owner (VALUE the owner's name), mode (VALUE the octal mode); nothing if none.
      def switchfs_parent_walk(mount)
        m = Shellwords.escape(mount.to_s)
        "d=#{m}; set --; while [ \"$d\" != / ]; do d=$(dirname -- \"$d\"); set -- \"$d\" \"$@\"; done; " \
          "for d do if [ -L \"$d\" ]; then echo \"link - $d\"; break; fi; [ -d \"$d\" ] || break; " \
          "if [ \"$(stat -c %u -- \"$d\")\" != 0 ]; then echo \"owner $(stat -c %U -- \"$d\") $d\"; break; fi; " \
          "if [ -n \"$(find \"$d\" -maxdepth 0 -perm /022 ! -perm -1000)\" ]; then " \
          "echo \"mode $(stat -c %a -- \"$d\") $d\"; break; fi; done; true"
      end

      # Why switchfs refuses MOUNT because of a directory above it, and what fixes it; nil when
      # every directory above it is root's and writable only by root.
      def switchfs_parent_refusal(host, mount, group)
        kind, value, dir = capture(:sh, "-c", Shellwords.escape(switchfs_parent_walk(mount))).strip.split(" ", 3)
        return nil if kind.nil?
        why = case kind
              when "link" then "#{dir} is a symlink (switchfs wants a path without symlinks)"
              when "owner" then "directory #{dir} is owned by #{value} (not root), so #{value} could " \
                                "replace #{mount} with a symlink to anywhere just before root mounts"
              else "directory #{dir} is writable by group or others (mode #{value}), so they could " \
                   "replace #{mount} with a symlink to anywhere just before root mounts"
              end
        default = switchfs_default_mount
        below_deploy = "#{dir}/".start_with?("#{deploy_path}/") || "#{mount}/".start_with?("#{deploy_path}/")
        fix = if kind != "link" && (below_deploy || value == capture(:id, "-un").strip) && mount.to_s != default.to_s
                "mount it outside the deploy path: as root: mkdir -p #{default} && switchfs --releases " \
                  "#{releases_path} --control-group #{group} #{default} (MOUNTPOINT=#{default} in " \
                  "/etc/switchfs/SITE.conf), and leave switchfs_mount unset (its default is #{default})"
              elsif kind == "link"
                "set switchfs_mount to the path the link leads to"
              else
                "as root: chown root: #{dir} && chmod go-w #{dir}"
              end
        "switchfs refuses the mount point #{mount} on #{host}: #{why}; #{fix} (docs/operations.md \"Bootstrap\")"
      end

      # The one line that says why switchctl status fails on this host, and the command that
      # fixes it (a directory above the mount point switchfs refuses, the mount point missing,
      # the socket refusing the deploy user, no daemon).
      def switchfs_diagnose(host, status_output)
        mount = fetch(:switchfs_mount).to_s
        user = capture(:id, "-un").strip
        group = capture(:id, "-gn").strip
        start = "switchfs --releases #{releases_path} --control-group #{group} #{mount}"
        refusal = switchfs_parent_refusal(host, mount, group)
        if refusal
          refusal
        elsif !test("[ -d #{Shellwords.escape(mount)} ]")
          "mount point #{mount} is missing on #{host}; as root: mkdir -p #{mount} && #{start} " \
            "(or systemctl enable --now switchfs@SITE; docs/operations.md \"Bootstrap\")"
        elsif status_output =~ /permission denied/i
          "switchfs on #{host} refuses #{user} (permission denied on its control socket); as " \
            "root, restart it with --control-group #{group} (SWITCHFS_OPTIONS=--control-group " \
            "#{group} in /etc/switchfs/SITE.conf, systemctl restart switchfs@SITE)"
        elsif status_output =~ /not a switchfs mount|dead switchfs mount|cannot reach|is switchfs running/
          "switchfs is not running for #{mount} on #{host}; as root: #{start} (or systemctl " \
            "enable --now switchfs@SITE; docs/operations.md \"Bootstrap\")"
        else
          "switchctl status fails on #{host}: #{status_output.lines.first.to_s.strip}"
        end
      end

      # Whether the symlink `current` (target LINK) leads to MOUNT: the absolute path, or the
      # relative one of a mount point inside a root-owned deploy path (the older layout).
      def switchfs_links_to_mount?(link, mount)
        return false if link.empty?
        deploy_path.join(link).cleanpath.to_s == Pathname.new(mount.to_s).cleanpath.to_s
      end
    end
  end
end
