<?php
// switchfs: tells OPcache which scripts a release switch changed. Installed outside every
// docroot (/usr/share/switchfs/opcache-invalidate.php) and run by the switchfs daemon,
// never by visitors:
//   - PHP-FPM: switchfs connects to the pool's socket and sends the FastCGI parameter
//     SWITCHFS_OPCACHE=1, which a web server never forwards from a client (client headers
//     arrive as HTTP_*), and which only someone allowed to connect to the pool can send.
//   - Apache + mod_php: a loopback-only Alias to this file whose configuration sets
//     SWITCHFS_SECRET (SetEnv); the daemon sends the same secret in X-Switchfs-Secret.
// Anything else gets a 404, as if the file did not exist.
//
// Two steps, so the daemon compares files between releases (it holds both) and PHP only
// reports what it caches and drops what changed:
//   X-Switchfs-Step: list        -> the cached scripts under X-Switchfs-Mount, with the mtime
//                                   each was cached with ("-" when validate_timestamps=0,
//                                   where OPcache does not record it)
//   X-Switchfs-Step: invalidate  -> opcache_invalidate($path, true) for each path of the
//                                   body (NUL-separated), counted.
// Answers are plain text; the daemon reads them. opcache_get_status() is shared by every
// worker of the pool (one shared memory segment per master), so one request is enough.

declare(strict_types=1);

function switchfs_answer(int $code, string $body): void
{
    http_response_code($code);
    header('Content-Type: text/plain; charset=binary');
    header('Cache-Control: no-store');
    echo $body;
    exit(0);
}

$viaFpm = ($_SERVER['SWITCHFS_OPCACHE'] ?? '') === '1';
// mod_php passes SetEnv in $_SERVER; PHP's built-in server and others only in the environment.
$secret = (string)($_SERVER['SWITCHFS_SECRET'] ?? (getenv('SWITCHFS_SECRET') ?: ''));
$given = (string)($_SERVER['HTTP_X_SWITCHFS_SECRET'] ?? '');
$remote = (string)($_SERVER['REMOTE_ADDR'] ?? '');
$viaHttp = $secret !== '' && hash_equals($secret, $given)
    && in_array($remote, ['127.0.0.1', '::1'], true);
if (!$viaFpm && !$viaHttp) {
    switchfs_answer(404, "Not Found\n");
}

$mount = rtrim((string)($_SERVER['HTTP_X_SWITCHFS_MOUNT'] ?? ''), '/');
if ($mount === '' || $mount[0] !== '/') {
    switchfs_answer(400, "error no mount point given\n");
}
if (!function_exists('opcache_get_status')) {
    switchfs_answer(500, "error the OPcache extension is not loaded in this PHP\n");
}
$status = @opcache_get_status(true);
if ($status === false) {
    $restrict = (string)ini_get('opcache.restrict_api');
    switchfs_answer(500, $restrict !== ''
        ? "error opcache.restrict_api ($restrict) does not include " . __FILE__ . "\n"
        : "error OPcache is disabled in this PHP (opcache.enable)\n");
}
$prefix = $mount . '/';
$validates = (bool)ini_get('opcache.validate_timestamps');
$step = (string)($_SERVER['HTTP_X_SWITCHFS_STEP'] ?? '');

if ($step === 'list') {
    $out = "switchfs-opcache 1\nvalidate_timestamps " . ($validates ? '1' : '0') . "\nscripts\n";
    foreach ($status['scripts'] ?? [] as $path => $info) {
        $path = (string)$path;
        if (strncmp($path, $prefix, strlen($prefix)) !== 0) {
            continue;
        }
        $ts = isset($info['timestamp']) ? (string)$info['timestamp'] : '-';
        $out .= $ts . ' ' . $path . "\0";
    }
    switchfs_answer(200, $out);
}

if ($step === 'invalidate') {
    $done = 0;
    $notCached = 0;
    $gone = 0;
    foreach (explode("\0", (string)file_get_contents('php://input')) as $path) {
        if ($path === '' || strncmp($path, $prefix, strlen($prefix)) !== 0) {
            continue;
        }
        if (opcache_invalidate($path, true)) {
            $done++;
        } elseif (!file_exists($path)) {
            // Deleted by the switch, and this PHP's opcache_invalidate() resolves the path
            // first (8.2.36 falls back to the name and drops it; older ones may not).
            $gone++;
        } else {
            $notCached++;
        }
    }
    switchfs_answer(200, "switchfs-opcache 1\ninvalidated $done\nnot_cached $notCached\ngone $gone\n");
}

switchfs_answer(400, "error unknown step\n");
