<?php
// Runs one task of a Deployer 7 recipe on this host without Deployer (not in Debian), so the
// deploy-tools test executes the recipe's own task code (dist/deployer-switchfs/contrib/
// switchfs.php, loaded by docs/deploy.php with `require`), not a copy of it:
//     php deployer-shim.php RECIPE TASK [name=value...]     (like `dep TASK -o name=value`)
// It reproduces, with Deployer's semantics, the part of Deployer's API the recipe uses; line
// numbers are of Deployer v7.5.9:
//   src/functions.php  host() 53 (a chainable set(); commands run locally), currentHost() 112,
//                      task() 186 (a callable body or a group array; returns a Task with
//                      once(), src/Task/Task.php 144), before() 238, after() 258, cd() 316,
//                      run() 392 (named arguments cwd/env/secret/nothrow/...; throws on a
//                      non-zero exit, returns the output rtrim'd), test() 521 (the same
//                      `if CMD; then echo +WORD; fi` it wraps a command in), info() 664,
//                      warning() 672, writeln() 686 ("[host] " before each line), parse()
//                      695, set() 705, get() 735 ({{name}} expansion, closures evaluated once),
//                      has() 747, output() 892, error() 960, timestamp() 968
//   recipe/deploy/release.php  releases_log 19-31, releases_list 34-58
//   recipe/common.php  the defaults current_path, user, keep_releases
// `require 'recipe/common.php'` and `require 'vendor/switchfs/deployer-switchfs/...'` resolve
// through the include path set below, as they do in a project with the package installed.
// Commands run locally with bash instead of over ssh; once() tasks and parallel hosts reduce
// to the one host. Exit 1 with the message on stderr when a task throws.
namespace Symfony\Component\Console\Helper {
    class Table
    {
        private array $headers = [];
        private array $rows = [];
        public function __construct($output) {}
        public function setHeaderTitle(string $t): static { return $this; }
        public function setHeaders(array $h): static { $this->headers = $h; return $this; }
        public function setRows(array $r): static { $this->rows = $r; return $this; }
        public function render(): void
        {
            foreach (array_merge([$this->headers], $this->rows) as $row) {
                echo implode(' | ', $row), "\n";
            }
        }
    }
}

namespace Deployer {
    final class Shim
    {
        public static array $config = [];
        public static array $tasks = [];
        public static array $before = [];
        public static array $after = [];
        public static ?string $cwd = null;
    }

    final class Task
    {
        public function __construct(public $body) {}
        public function once(bool $once = true): self { return $this; }
        public function hidden(bool $hidden = true): self { return $this; }
    }

    final class Host
    {
        public function __construct(private string $alias) {}
        public function getAlias(): string { return $this->alias; }
        public function set(string $name, $value): self { return $this; }
        public function setRemoteUser(string $user): self { return $this; }
        public function setDeployPath(string $path): self { return $this; }
        public function setLabels(array $labels): self { return $this; }
    }

    function set(string $name, $value): void { Shim::$config[$name] = $value; }

    function has(string $name): bool { return array_key_exists($name, Shim::$config); }

    function get(string $name, $default = null)
    {
        if (!has($name)) {
            if (func_num_args() > 1) {
                return $default;
            }
            throw new \RuntimeException("config \"$name\" is not set");
        }
        $value = Shim::$config[$name];
        if ($value instanceof \Closure) {
            $value = Shim::$config[$name] = $value();
        }
        return is_string($value) ? parse($value) : $value;
    }

    function parse(string $s): string
    {
        return preg_replace_callback('/\{\{\s*([\w\/:-]+)\s*\}\}/', fn ($m) => (string) get($m[1]), $s);
    }

    function host(string ...$hostname): Host { return new Host($hostname[0]); }
    function desc(string $d): void {}
    function task(string $name, callable|array $body): Task { return Shim::$tasks[$name] = new Task($body); }
    function before(string $task, string $then): void { Shim::$before[$task][] = $then; }
    function after(string $task, string $then): void { Shim::$after[$task][] = $then; }
    function cd(string $dir): void { Shim::$cwd = parse($dir); }
    function writeln(string $line): void { echo '[localhost] ', strip_tags(parse($line)), "\n"; }
    function info(string $message): void { writeln('info ' . parse($message)); }
    function warning(string $message): void { writeln("warning $message"); }
    function output() { return null; }
    function currentHost(): Host { return new Host('localhost'); }
    function timestamp(): string { return (new \DateTime('now', new \DateTimeZone('UTC')))->format(\DateTime::ISO8601); }
    function error(string $message): \Exception { return new \RuntimeException(parse($message)); }

    /** @return array{0: int, 1: string} */
    function shell(string $command, ?string $cwd): array
    {
        $cwd ??= Shim::$cwd;
        $cd = $cwd === null ? '' : 'cd ' . escapeshellarg($cwd) . ' && ';
        exec('bash -c ' . escapeshellarg($cd . '( ' . parse($command) . ' ) 2>&1'), $out, $code);
        return [$code, rtrim(implode("\n", $out))];
    }

    function run(string $command, ?string $cwd = null, ?array $env = null, ?string $secret = null,
                 ?bool $nothrow = false, ?bool $forceOutput = false, ?int $timeout = null,
                 ?int $idleTimeout = null): string
    {
        [$code, $out] = shell($command, $cwd);
        if ($code !== 0 && !$nothrow) {
            throw new \RuntimeException("command failed (exit $code): " . parse($command) . ": $out");
        }
        return $out;
    }

    function test(string $command): bool
    {
        $true = '+' . array_rand(array_flip(['accurate', 'appropriate', 'correct', 'legitimate', 'precise', 'right', 'true', 'yes', 'indeed']));
        return trim(run("if $command; then echo $true; fi")) === $true;
    }

    function invoke(string $name): void
    {
        if (!isset(Shim::$tasks[$name])) {
            throw new \RuntimeException("no task $name");
        }
        foreach (Shim::$before[$name] ?? [] as $first) {
            invoke($first);
        }
        $body = Shim::$tasks[$name]->body;
        if (is_array($body)) {
            foreach ($body as $member) {
                invoke($member);
            }
        } else {
            $body();
        }
        foreach (Shim::$after[$name] ?? [] as $then) {
            invoke($then);
        }
    }

    // Defaults of recipe/common.php and recipe/deploy/release.php.
    set('current_path', '{{deploy_path}}/current');
    set('user', 'root');
    set('keep_releases', 10);
    set('releases_log', function () {
        cd('{{deploy_path}}');
        if (!test('[ -f .dep/releases_log ]')) {
            return [];
        }
        $lines = explode("\n", run('tail -n 300 .dep/releases_log'));
        return array_filter(array_map(fn ($l) => json_decode($l, true), $lines));
    });
    set('releases_list', function () {
        cd('{{deploy_path}}');
        if (!test('[ -d releases ] && [ "$(ls -A releases)" ]')) {
            return [];
        }
        $ll = array_map(fn ($r) => basename(rtrim(trim($r), '/')), explode("\n", run('cd releases && ls -t -1 -d */')));
        $releases = [];
        foreach (array_reverse(get('releases_log')) as $release) {
            if (in_array($release['release_name'], $ll, true)) {
                $releases[] = $release['release_name'];
            }
        }
        return $releases;
    });

    [$self, $recipe, $task] = array_pad($argv, 3, null);
    if ($recipe === null || $task === null) {
        fwrite(STDERR, "usage: php deployer-shim.php RECIPE TASK [name=value...]\n");
        exit(2);
    }
    // A project's include path: recipe/common.php (this shim's defaults above) and the package
    // under vendor/, as Composer installs it.
    $root = getenv('DEPLOYER_SHIM_ROOT') ?: sys_get_temp_dir();
    set_include_path($root . PATH_SEPARATOR . get_include_path());
    require $recipe;
    foreach (array_slice($argv, 3) as $option) {
        [$name, $value] = explode('=', $option, 2);
        set($name, $value);
    }
    try {
        invoke($task);
    } catch (\Throwable $e) {
        fwrite(STDERR, "dep $task: " . str_replace("\n", ' ', $e->getMessage()) . "\n");
        exit(1);
    }
}
