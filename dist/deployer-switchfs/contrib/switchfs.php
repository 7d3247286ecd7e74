<?php
/*
Serves the site through switchfs instead of flipping a symlink per host. Add to your _deploy.php_
after `recipe/common.php` (or your framework recipe):

```php
require 'vendor/switchfs/deployer-switchfs/contrib/switchfs.php';
```

Each host mounts switchfs at a fixed directory only root can change, `/srv/switchfs/{{application}}`,
started with `--releases {{deploy_path}}/releases` and `--control-group` of the deploy user
(docs/operations.md "Bootstrap"); the deploy user owns `{{deploy_path}}`, and `current` there
is an absolute symlink to the mount, made once by `switchfs:check` and never changed again.
(switchfs refuses a mount point below a directory the deploy user owns: that user could swap
it for a symlink to anywhere just before root mounts.) The hosts' clocks must agree (NTP).

## Configuration

- **switchfs_mount**: the mount `current` links to; default `/srv/switchfs/{{application}}`
  (the deploy path's last component when `application` is not set).
- **bin/switchctl**: switchctl on the hosts; default `switchctl`.
- **switchfs_lead**: seconds ahead the fleet's switch instant is, long enough for Deployer to
  reach every host with it; default `3`.
- **switchfs_wait_drain**: seconds to wait for the previous release to drain (0: do not wait).
- **switchfs_instant_file**: where `switchfs:schedule` leaves the instant for the hosts'
  `deploy:symlink` (Deployer's workers run on this machine); default in the temporary directory,
  one per project directory.
- **rollback_candidate**: `dep rollback -o rollback_candidate=NAME` rolls back to NAME.

## Usage

`dep deploy`: `switchfs:prepare` runs `switchctl prepare` on every host (the deploy stops before
anything switches when one host refuses), `switchfs:schedule` picks one instant, and
`deploy:symlink` runs `switchctl activate {{release_name}} --at INSTANT` on all hosts in parallel.
`dep rollback` does the same with `switchctl rollback`. A host whose switch succeeded but whose
hook or drain failed (switchctl exit 3) is reported as a warning naming the host; the deploy goes
on (unlock, cleanup, success). A host that refuses the instant itself (it had passed when the
command arrived: raise switchfs_lead) is switched at once with a warning, rather than leaving
the fleet split. With a switchctl that has no `prepare` or `--at`, each host switches on its own
with plain `activate` (one line says so).

Tasks of recipe/deploy/*.php replaced here, and why:
- deploy:symlink (symlink.php)  `mv -T release current` per host; here `switchctl activate --at`
- rollback (rollback.php)       relinks `current` to the candidate found by `readlink current`;
                                here `switchctl rollback`, which steps back through switchfs's
                                activation history and skips releases rolled back from;
                                BAD_RELEASE is still written for `dep releases`
- releases (release.php)        finds the current release by `readlink current`; here from
                                switchctl
- deploy:cleanup (cleanup.php)  `rm -rf` of the oldest; here `switchctl prune`, which spares the
                                active and previous release and any release still in use;
                                keep_releases -1 (Deployer's "keep all") deletes nothing
 */

namespace Deployer;

use Symfony\Component\Console\Helper\Table;

set('switchfs_mount', function () {
    $name = has('application') ? (string) get('application') : '';
    if ($name === '' || str_contains($name, '/')) {
        $name = basename(get('deploy_path'));
    }
    return "/srv/switchfs/$name";
});
set('bin/switchctl', 'switchctl');
set('switchfs_lead', 3);
set('switchfs_wait_drain', 0);
set('switchfs_instant_file', function () {
    return sys_get_temp_dir() . '/deployer-switchfs-' . md5((string) getcwd()) . '.at';
});
set('rollback_candidate', '');

/** Runs switchctl on the current host: [exit status, output (stdout and stderr)]. run()
 *  throws on any non-zero exit, and exit 3 ("switched, but") must be told from a refusal. */
function switchfs_ctl(string $args): array
{
    $out = run("{{bin/switchctl}} --mount {{switchfs_mount}} $args 2>&1; echo \"switchfs-rc=\$?\"");
    $lines = explode("\n", $out);
    $last = array_pop($lines);
    $rc = preg_match('/switchfs-rc=(\d+)/', $last, $m) ? (int) $m[1] : 255;
    return [$rc, trim(implode("\n", $lines))];
}

function switchfs_last_line(string $out): string
{
    $lines = explode("\n", trim($out));
    return preg_replace('/^switchctl: /', '', (string) end($lines));
}

function switchfs_status(): array
{
    [$rc, $out] = switchfs_ctl('status --json');
    $status = $rc === 0 ? json_decode($out, true) : null;
    if (!is_array($status)) {
        throw error('switchctl status --json: ' . switchfs_last_line($out));
    }
    return $status;
}

/** What the host's switchctl can do: "prepare", "at" (activate --at), "rollback_at". */
function switchfs_capabilities(): array
{
    $ctl = '{{bin/switchctl}}';
    return preg_split('/\s+/', run("$ctl prepare --help >/dev/null 2>&1 && echo prepare; "
        . "$ctl activate --help 2>/dev/null | grep -q -e '--at' && echo at; "
        . "$ctl rollback --help 2>/dev/null | grep -q -e '--at' && echo rollback_at; true"), -1, PREG_SPLIT_NO_EMPTY);
}

function switchfs_drain_flag(): string
{
    $drain = (int) get('switchfs_wait_drain');
    return $drain > 0 ? " --wait-drain=$drain" : '';
}

/** The shell walk (the same in capistrano-switchfs) that finds the first directory above the
 *  mount point switchfs refuses, as its StrictModes check does: "KIND VALUE DIR", KIND one of
 *  link, owner (VALUE the owner's name), mode (VALUE the octal mode); nothing if none. */
function switchfs_parent_walk(string $mount): string
{
    $m = escapeshellarg($mount);
    return "d=$m; set --; while [ \"\$d\" != / ]; do d=\$(dirname -- \"\$d\"); set -- \"\$d\" \"\$@\"; done; "
        . "for d do if [ -L \"\$d\" ]; then echo \"link - \$d\"; break; fi; [ -d \"\$d\" ] || break; "
        . "if [ \"\$(stat -c %u -- \"\$d\")\" != 0 ]; then echo \"owner \$(stat -c %U -- \"\$d\") \$d\"; break; fi; "
        . "if [ -n \"\$(find \"\$d\" -maxdepth 0 -perm /022 ! -perm -1000)\" ]; then "
        . "echo \"mode \$(stat -c %a -- \"\$d\") \$d\"; break; fi; done; true";
}

/** Why switchfs refuses the mount point because of a directory above it, and what fixes it;
 *  null when every directory above it is root's and writable only by root. */
function switchfs_parent_refusal(string $mount, string $user, string $group): ?string
{
    $host = currentHost()->getAlias();
    $found = trim(run('sh -c ' . escapeshellarg(switchfs_parent_walk($mount))));
    if ($found === '') {
        return null;
    }
    [$kind, $value, $dir] = explode(' ', $found, 3);
    $why = match ($kind) {
        'link' => "$dir is a symlink (switchfs wants a path without symlinks)",
        'owner' => "directory $dir is owned by $value (not root), so $value could replace $mount "
            . 'with a symlink to anywhere just before root mounts',
        default => "directory $dir is writable by group or others (mode $value), so they could "
            . "replace $mount with a symlink to anywhere just before root mounts",
    };
    $deploy = rtrim(parse('{{deploy_path}}'), '/') . '/';
    $below = str_starts_with("$dir/", $deploy) || str_starts_with("$mount/", $deploy);
    $default = '/srv/switchfs/' . basename(parse('{{deploy_path}}'));
    if (has('application') && get('application') !== '' && !str_contains((string) get('application'), '/')) {
        $default = '/srv/switchfs/' . get('application');
    }
    if ($kind === 'link') {
        $fix = 'set switchfs_mount to the path the link leads to';
    } elseif (($below || $value === $user) && $mount !== $default) {
        $fix = "mount it outside the deploy path: as root: mkdir -p $default && switchfs --releases "
            . "{{deploy_path}}/releases --control-group $group $default (MOUNTPOINT=$default in "
            . "/etc/switchfs/SITE.conf), and leave switchfs_mount unset (its default is $default)";
    } else {
        $fix = "as root: chown root: $dir && chmod go-w $dir";
    }
    return "switchfs refuses the mount point $mount on $host: $why; $fix (docs/operations.md \"Bootstrap\")";
}

/** The one line that says why switchfs does not answer, and the command that fixes it. */
function switchfs_diagnose(string $out): string
{
    $host = currentHost()->getAlias();
    $mount = parse('{{switchfs_mount}}');
    $user = run('id -un');
    $group = run('id -gn');
    $start = "switchfs --releases {{deploy_path}}/releases --control-group $group $mount";
    $service = '(or systemctl enable --now switchfs@SITE; docs/operations.md "Bootstrap")';
    $refusal = switchfs_parent_refusal($mount, $user, $group);
    if ($refusal !== null) {
        return $refusal;
    }
    if (!test('[ -d {{switchfs_mount}} ]')) {
        return "mount point $mount is missing on $host; as root: mkdir -p $mount && $start $service";
    }
    if (stripos($out, 'permission denied') !== false) {
        return "switchfs on $host refuses $user (permission denied on its control socket); as root, "
            . "restart it with --control-group $group (SWITCHFS_OPTIONS=--control-group $group in "
            . "/etc/switchfs/SITE.conf, systemctl restart switchfs@SITE)";
    }
    if (preg_match('/not a switchfs mount|dead switchfs mount|cannot reach|is switchfs running/', $out)) {
        return "switchfs is not running for $mount on $host; as root: $start $service";
    }
    return "switchctl status fails on $host: " . switchfs_last_line($out);
}

/** Whether `current`'s target LINK leads to the mount: its absolute path, or the relative one
 *  of a mount point inside a root-owned deploy path (the older layout). */
function switchfs_links_to_mount(string $link, string $mount): bool
{
    if ($link === '') {
        return false;
    }
    $path = str_starts_with($link, '/') ? $link : parse('{{deploy_path}}') . '/' . $link;
    $clean = fn (string $p) => preg_replace(['#/\./#', '#/+#', '#/\.?$#'], ['/', '/', ''], $p);
    return $clean($path) === $clean($mount);
}

desc('Checks that switchfs serves the site and that current links to its mount');
task('switchfs:check', function () {
    [$rc, $out] = switchfs_ctl('status');
    if ($rc !== 0) {
        throw error(switchfs_diagnose($out));
    }
    $user = run('id -un');
    $mount = parse('{{switchfs_mount}}');
    if (!test('[ -w {{deploy_path}} ]')) {
        throw error("{{deploy_path}} on " . currentHost()->getAlias() . " is not writable by $user "
            . "(current -> $mount cannot be made); as root: chown $user: {{deploy_path}} "
            . "{{deploy_path}}/releases {{deploy_path}}/shared");
    }
    if (test('[ ! -e {{current_path}} ] && [ ! -L {{current_path}} ]')) {
        // First deploy: made once, absolute (the mount is outside the deploy path), never
        // flipped again.
        run('ln -s {{switchfs_mount}} {{current_path}}');
    }
    $link = run('readlink {{current_path}} || true');
    if (!switchfs_links_to_mount($link, $mount)) {
        $current = parse('{{current_path}}');
        throw error("$current on " . currentHost()->getAlias() . ' links to '
            . ($link === '' ? 'nothing (not a symlink)' : $link) . ", not to the mount $mount; as $user: "
            . "ln -s $mount $current.switchfs && mv -T $current.switchfs $current (a site still serving "
            . 'current -> releases/N: docs/operations.md, "Migrate from a current symlink")');
    }
});
after('deploy:setup', 'switchfs:check');

desc('Checks on every host that the release can be activated (nothing switches)');
task('switchfs:prepare', function () {
    if (in_array('prepare', switchfs_capabilities(), true)) {
        [$rc, $out] = switchfs_ctl('prepare {{release_name}}');
    } else {
        [$rc, $out] = switchfs_ctl('status');
        if ($rc === 0 && !test('[ -d {{deploy_path}}/releases/{{release_name}} ]')) {
            [$rc, $out] = [1, 'no release {{release_name}}'];
        }
    }
    if ($rc !== 0) {
        throw error('release {{release_name}} cannot be activated on ' . currentHost()->getAlias()
            . ': ' . switchfs_last_line($out) . '; nothing was switched');
    }
});
before('deploy:symlink', 'switchfs:prepare');

desc('Picks the instant every host switches at');
task('switchfs:schedule', function () {
    $at = (new \DateTimeImmutable('now', new \DateTimeZone('UTC')))
        ->modify(sprintf('+%d milliseconds', (int) round((float) get('switchfs_lead') * 1000)));
    $file = get('switchfs_instant_file');
    if (file_put_contents($file, $at->format('Y-m-d\TH:i:s.v\Z') . "\n") === false) {
        throw error("cannot write $file");
    }
})->once();
before('deploy:symlink', 'switchfs:schedule');

/** The instant switchfs:schedule picked, or null (switch at once) without one or --at. */
function switchfs_instant(string $capability): ?string
{
    $host = currentHost()->getAlias();
    if (!in_array($capability, switchfs_capabilities(), true)) {
        info("switchctl on $host has no --at; it switches on its own (up to the hosts' spread apart)");
        return null;
    }
    $at = trim((string) @file_get_contents(get('switchfs_instant_file')));
    if ($at === '') {
        throw error('no instant to switch at (switchfs:schedule did not run); nothing was switched');
    }
    return $at;
}

/** Runs a switch (at AT, when not null); exit 3 is a warning naming the host, anything else
 *  but 0 throws. A host that refuses the instant (it had passed when the command arrived,
 *  say) is switched at once: prepared, switching late beats leaving the fleet split. */
function switchfs_switch(string $args, ?string $at, string $name): string
{
    $host = currentHost()->getAlias();
    $plain = $args . switchfs_drain_flag();
    [$rc, $out] = switchfs_ctl($at === null ? $plain : "$plain --at $at");
    if ($rc === 1 && $at !== null) {
        warning("switchfs: $host missed the instant (" . switchfs_last_line($out) . '); switching it now');
        [$rc, $out] = switchfs_ctl($plain);
    }
    if ($rc === 3) {
        warning("switchfs: $host switched to $name, but: " . switchfs_last_line($out));
    } elseif ($rc !== 0) {
        throw error("switching to $name failed on $host: " . switchfs_last_line($out));
    }
    return $out;
}

desc('Switches the live release with switchctl at one instant on all hosts (replaces the symlink flip)');
task('deploy:symlink', function () {
    switchfs_switch('activate {{release_name}}', switchfs_instant('at'), parse('{{release_name}}'));
    // Deployer's own task moves this link away; left behind it would make release_path
    // point at this release after a rollback.
    run('rm -f {{deploy_path}}/release');
});

desc('Rolls back one release further each time, never to a release rolled back from');
task('switchfs:rollback', function () {
    $to = get('rollback_candidate');
    $args = $to === '' ? 'rollback' : 'rollback --to ' . escapeshellarg($to);
    $out = switchfs_switch($args, switchfs_instant('rollback_at'), $to === '' ? 'the previous release' : $to);
    if (preg_match('/^switched from (\S+) to (\S+)/m', $out, $m)) {
        run("echo '" . timestamp() . ",{{user}}' > {{deploy_path}}/releases/$m[1]/BAD_RELEASE");
        writeln("<info>rollback</info> from $m[1] to release <info>$m[2]</info> was <success>successful</success>");
    }
    run('rm -f {{deploy_path}}/release');
});
desc('Rolls back every host at one instant');
task('rollback', ['switchfs:schedule', 'switchfs:rollback']);

desc('Shows releases list');
task('releases', function () {
    cd('{{deploy_path}}');
    $current = switchfs_status()['active'] ?? '';
    $releasesList = get('releases_list');
    $rows = [];
    foreach (get('releases_log') as $meta) {
        $release = $meta['release_name'];
        $state = $release;
        if (in_array($release, $releasesList, true) && test("[ -f releases/$release/BAD_RELEASE ]")) {
            $state .= ' (bad)';
        }
        if ($release === $current) {
            $state .= ' (current)';
        }
        $revision = test("[ -f releases/$release/REVISION ]") ? run("cat releases/$release/REVISION") : 'unknown';
        $rows[] = [$meta['created_at'], $state, $meta['user'], $meta['target'], $revision];
    }
    (new Table(output()))
        ->setHeaderTitle(currentHost()->getAlias())
        ->setHeaders(['Date (UTC)', 'Release', 'Author', 'Target', 'Commit'])
        ->setRows($rows)
        ->render();
});

desc('Deletes old releases that nothing uses any more');
task('deploy:cleanup', function () {
    run('rm -f {{deploy_path}}/release');
    $keep = (int) get('keep_releases');
    if ($keep > 0) {
        [$rc, $out] = switchfs_ctl("prune --keep $keep --yes");
        if ($rc !== 0) {
            throw error('switchctl prune: ' . switchfs_last_line($out));
        }
    }
});
