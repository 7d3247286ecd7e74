<?php
// Runs one task of a Deployer 7 recipe on this host without Deployer (not in Debian), so the
// deploy-tools test executes docs/deploy.php's own task code, not a copy of it:
//     php deployer-shim.php RECIPE TASK [name=value...]     (like `dep TASK -o name=value`)
// It provides the part of Deployer's API the recipe uses, with Deployer's semantics: set/get
// with {{name}} expansion and lazily evaluated closures, run (throws on a non-zero exit and
// returns the trimmed output), test, cd, task, desc, after, writeln, error, timestamp, and
// the releases_log / releases_list values of recipe/deploy/release.php (v7.5.9). Commands run
// locally with bash instead of over ssh. Exit 1 with the message on stderr when a task throws.
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
        public static array $after = [];
        public static ?string $cwd = null;
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

    function desc(string $d): void {}
    function task(string $name, callable $body): void { Shim::$tasks[$name] = $body; }
    function after(string $task, string $then): void { Shim::$after[$task][] = $then; }
    function cd(string $dir): void { Shim::$cwd = parse($dir); }
    function writeln(string $line): void { echo strip_tags($line), "\n"; }
    function output() { return null; }
    function currentHost() { return new class { public function getAlias(): string { return 'localhost'; } }; }
    function timestamp(): string { return (new \DateTime('now', new \DateTimeZone('UTC')))->format(\DateTime::ISO8601); }
    function error(string $message): \Exception { return new \RuntimeException(parse($message)); }

    /** @return array{0: int, 1: string} */
    function shell(string $command): array
    {
        $cd = Shim::$cwd === null ? '' : 'cd ' . escapeshellarg(Shim::$cwd) . ' && ';
        exec('bash -c ' . escapeshellarg($cd . '( ' . parse($command) . ' ) 2>&1'), $out, $code);
        return [$code, rtrim(implode("\n", $out))];
    }

    function run(string $command): string
    {
        [$code, $out] = shell($command);
        if ($code !== 0) {
            throw new \RuntimeException("command failed (exit $code): " . parse($command) . ": $out");
        }
        return $out;
    }

    function test(string $command): bool { return shell($command)[0] === 0; }

    function invoke(string $name): void
    {
        if (!isset(Shim::$tasks[$name])) {
            throw new \RuntimeException("no task $name");
        }
        (Shim::$tasks[$name])();
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
