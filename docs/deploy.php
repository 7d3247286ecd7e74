<?php
// Deployer 7 recipe: serve the site through switchfs instead of flipping a symlink per deploy.
// Include it after recipe/common.php (or your framework recipe):
//     require 'contrib/switchfs.php';   // this file, copied into your project
//
// Layout (README "Deployer and Capistrano"): switchfs is mounted at a fixed directory,
// {{deploy_path}}/.switchfs, started with --releases {{deploy_path}}/releases; `current` is a
// symlink to it, made once and never changed again, so nothing that resolves `current` ever
// sees it move, and deploy:setup's "directory (not symlink) at current" check keeps passing.
// Before the first deploy, as root: create releases/ and .switchfs/, start switchfs (see
// docs/operations.md "Bootstrap"), and let the deploy user use its socket (--control-group).
//
// Tasks of recipe/deploy/*.php replaced here, and why:
// - deploy:symlink (symlink.php)  `mv -T release current`; here `switchctl activate`
// - rollback (rollback.php)       relinks `current` to the candidate found by `readlink
//                                 current`; here `switchctl rollback`, which steps back
//                                 through switchfs's activation history and skips releases
//                                 rolled back from; BAD_RELEASE is still written for `dep
//                                 releases`
// - releases (release.php)        finds the current release by `readlink current`; here from
//                                 switchctl
// - deploy:cleanup (cleanup.php)  `rm -rf` of the oldest; here `switchctl prune`, which spares
//                                 the active and previous release and any release still in
//                                 use; keep_releases -1 (Deployer's "keep all") deletes nothing
// Added: switchfs:check after deploy:setup (the daemon answers; `current` links to the mount).
namespace Deployer;

use Symfony\Component\Console\Helper\Table;

set('switchfs_mount', '{{deploy_path}}/.switchfs');
// Wait up to this many seconds for the previous release to drain (0: do not wait).
set('switchfs_wait_drain', 0);
// `dep rollback -o rollback_candidate=NAME` rolls back to NAME; empty: one step back.
set('rollback_candidate', '');

function switchctl(string $args): string
{
    return run("switchctl --mount {{switchfs_mount}} $args");
}

function switchfs_status(): array
{
    $status = json_decode(switchctl('status --json'), true);
    if (!is_array($status)) {
        throw error('switchctl status --json gave no JSON');
    }
    return $status;
}

function switchfs_drain_flag(): string
{
    $drain = (int) get('switchfs_wait_drain');
    return $drain > 0 ? " --wait-drain=$drain" : '';
}

desc('Checks that switchfs serves the site and that current links to its mount');
task('switchfs:check', function () {
    if (!test('switchctl --mount {{switchfs_mount}} status >/dev/null')) {
        throw error("switchfs does not answer for {{switchfs_mount}}: start it before deploying "
            . "(switchfs --releases {{deploy_path}}/releases {{switchfs_mount}}; docs/operations.md)");
    }
    if (test('[ ! -e {{current_path}} ] && [ ! -L {{current_path}} ]')) {
        // First deploy: made once, never flipped again.
        run('ln -s "$(basename {{switchfs_mount}})" {{current_path}}');
    }
    $link = run('readlink {{current_path}} || true');
    if ($link !== basename(parse('{{switchfs_mount}}')) && $link !== parse('{{switchfs_mount}}')) {
        throw error("{{current_path}} is not a symlink to {{switchfs_mount}}: migrate it first "
            . "(docs/operations.md, \"Migrate from a current symlink\")");
    }
});
after('deploy:setup', 'switchfs:check');

desc('Switches the live release with switchctl (replaces the symlink flip)');
task('deploy:symlink', function () {
    switchctl('activate {{release_name}}' . switchfs_drain_flag());
    // Deployer's own task moves this link away; left behind it would make release_path
    // point at this release after a rollback.
    run('rm -f {{deploy_path}}/release');
});

desc('Rolls back one release further each time, never to a release rolled back from');
task('rollback', function () {
    $to = get('rollback_candidate');
    $args = $to === '' ? 'rollback' : 'rollback --to ' . escapeshellarg($to);
    $out = switchctl($args . switchfs_drain_flag());
    if (preg_match('/^switched from (\S+) to (\S+)/', $out, $m)) {
        run("echo '" . timestamp() . ",{{user}}' > {{deploy_path}}/releases/$m[1]/BAD_RELEASE");
        writeln("<info>rollback</info> from $m[1] to release <info>$m[2]</info> was <success>successful</success>");
    }
    run('rm -f {{deploy_path}}/release');
});

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
        switchctl("prune --keep $keep --yes");
    }
});
