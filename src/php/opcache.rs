//! OPcache invalidation after a switch (`--php-fpm`, `--php-http`): before `activate`
//! answers, every configured PHP pool drops exactly the cached scripts whose content the
//! switch changed (or removed), and keeps the rest warm.
//!
//! Why: OPcache keys scripts by path and, with `revalidate_freq` above 0, looks at a file
//! again only every that many seconds; with `validate_timestamps=0` never. Under switchfs
//! the path never changes, so without this the old bytecode runs on after a switch. The
//! daemon is the one party that knows, at the switch, which paths changed.
//!
//! How, per pool (one request reaches the whole pool: OPcache's shared memory is per
//! master, shared by all its workers), all within one deadline (`--php-timeout`):
//! 0. Connect and check the listener is the master (root, or `--php-fpm-owner`; over TCP,
//!    and for `--php-http`, by the uid `/proc/net/tcp` gives its socket, see `tcp_owner`),
//!    before anything is sent, then wait for the pool's compilations of old scripts in
//!    flight.
//! 1. `list`: the shipped script (`dist/opcache-invalidate.php`, outside every docroot)
//!    returns the scripts OPcache holds under the mount point, with the mtime each was
//!    cached with (only recorded by OPcache when `validate_timestamps=1`). Listed paths
//!    outside the mount are ignored, and at most `MAX_LISTED` entries read, none deeper than
//!    `MAX_DEPTH` under the mount (one warning line when a pool lists more).
//! 2. The daemon decides per cached path with the mtime registry's rule: the path is changed
//!    when the mount now reports another mtime than the one cached, or, without a cached
//!    mtime, when the file's identity differs between the release the pool was last
//!    brought up to date with and the new one and its reported mtime differs too (the
//!    registry never reports two contents with one mtime, and keeps the mtime of equal
//!    content). A path missing from the new release, or no longer a plain regular file, is
//!    changed. Cost: two descriptor walks per cached script, whatever the release's size.
//! 3. `invalidate`: the script calls `opcache_invalidate($path, true)` for those paths.
//!
//! Two requests rather than one: the comparison needs both release directories, which only
//! the daemon holds (through descriptors), and the PHP side stays a few lines of plain
//! OPcache calls. A failed pool is reported like a failing hook (the switch stays) and is
//! brought fully up to date at the next switch: every cached script under the mount is then
//! invalidated, since what it cached in between is unknown.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::php::fastcgi::{self, Address};
use crate::switch::docroot::{Active, Docroot};
use crate::switch::release::Release;

/// Where the daemon finds the shipped script by default: the package and `scripts/install`
/// put it there (/usr/share, not /usr/local: a Debian package may not install into
/// /usr/local).
pub const DEFAULT_SCRIPT: &str = "/usr/share/switchfs/opcache-invalidate.php";
/// Paths per `invalidate` request, so a body stays far below PHP's `post_max_size` (8 MiB).
const PATHS_PER_REQUEST: usize = 2_000;
/// The protocol line both steps answer with first.
const MAGIC: &[u8] = b"switchfs-opcache 1\n";
/// After this long waiting for compilations of old scripts still running, the wait says so
/// in the log once (see `wait_for_compiles`); it goes on up to --php-timeout.
const COMPILE_WAIT_NOTICE: Duration = Duration::from_secs(2);
/// File name extensions of what PHP compiles; other open files (static downloads) are not
/// waited for.
const SCRIPT_EXTENSIONS: &[&str] = &[
    "php", "phtml", "inc", "php3", "php4", "php5", "php7", "php8",
];
/// Most entries of one `list` answer taken into account, and the deepest path under the
/// mount (in components). Each listed path costs two descriptor walks as deep as it is, so
/// both bound the comparison work a pool (or an impostor) can ask for; real applications
/// stay far below (a large Magento or Drupal tree caches some 50,000 scripts, 15 deep).
/// Beyond them one warning line says how much was ignored.
const MAX_LISTED: usize = 200_000;
const MAX_DEPTH: usize = 40;
/// How many listed paths are compared between two looks at the deadline and at a later
/// switch (each look costs a clock read).
const CHECK_EVERY: usize = 256;
/// The process names of Apache's parent and children (`/proc/PID/comm`), for `--php-http`.
const APACHE_NAMES: &[&str] = &["apache2", "httpd"];

/// One PHP pool to keep in step with the active release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A PHP-FPM master's FastCGI socket.
    Fpm(Address),
    /// An HTTP URL on loopback that runs the shipped script (Apache + mod_php).
    Http(HttpUrl),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Fpm(a) => write!(f, "php-fpm {a}"),
            Endpoint::Http(u) => write!(f, "php-http {}", u.original),
        }
    }
}

/// `http://HOST[:PORT]/PATH`, the only form accepted: the request carries a secret, which
/// must not cross a network, so this is meant for loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host_port: String,
    pub host: String,
    pub path: String,
    pub original: String,
}

impl HttpUrl {
    /// # Errors
    /// Not `http://`, no host, or a host other than loopback.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?}: only http:// URLs on loopback are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) => return Err(format!("{s:?}: bad port {p:?}")),
            },
            _ => (authority, 80),
        };
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{s:?}: the host must be loopback (127.0.0.1, [::1] or localhost): \
                 the request carries the secret in clear"
            ));
        }
        if path.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return Err(format!(
                "{s:?}: the path contains spaces or control characters"
            ));
        }
        Ok(HttpUrl {
            host_port: format!("{host}:{port}"),
            host: host.to_string(),
            path: path.to_string(),
            original: s.to_string(),
        })
    }
}

/// What the last invalidation of one pool did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub at: SystemTime,
    /// The release the pool was brought up to date with (or should have been).
    pub release: String,
    /// Scripts OPcache held under the mount point.
    pub cached: usize,
    /// Of those, the ones the switch changed, asked to be invalidated.
    pub changed: usize,
    /// Invalidated by OPcache.
    pub invalidated: usize,
    /// Deleted by the switch: OPcache cannot invalidate them by name (see the PHP script).
    pub gone: usize,
    pub took: Duration,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// The release this pool's OPcache was last brought up to date with; `None` after a
    /// failure (then everything cached under the mount is invalidated next time).
    synced: Option<Arc<Release>>,
    last: Option<LastRun>,
}

#[derive(Debug)]
struct Pool {
    endpoint: Endpoint,
    state: Mutex<PoolState>,
}

/// Which `sync` this is, to tell whether a later one started.
struct Turn<'a> {
    latest: &'a std::sync::atomic::AtomicU64,
    mine: u64,
}

/// One `list_and_invalidate` pass: the releases compared and its limits.
#[derive(Clone, Copy)]
struct Pass<'a> {
    old: Option<&'a Arc<Release>>,
    new: &'a Arc<Release>,
    deadline: Instant,
    turn: &'a Turn<'a>,
}

impl Pass<'_> {
    /// Whether to go on with `doing`: not when the deadline passed or a later switch started.
    fn go_on(&self, doing: &str) -> Result<(), String> {
        if self.turn.latest.load(std::sync::atomic::Ordering::SeqCst) != self.turn.mine {
            return Err(format!(
                "stopped {doing}: a later switch took over (it invalidates everything this \
                 pool caches under the mount)"
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(format!("timed out {doing} (see --php-timeout)"));
        }
        Ok(())
    }
}

/// Settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct PhpConfig {
    pub fpm: Vec<String>,
    pub http: Vec<String>,
    pub secret_file: Option<PathBuf>,
    pub script: PathBuf,
    pub timeout: Duration,
    /// The uid the listener of a `--php-fpm` Unix socket must run as (`--php-fpm-owner`):
    /// the PHP-FPM master creates its sockets as root (0). Also the owner a `HOST:PORT`
    /// pool's TCP listener must have.
    pub fpm_owner: u32,
    /// The uid a `--php-http` TCP listener must belong to (`--php-http-owner`): Apache's
    /// parent binds its ports as root (0).
    pub http_owner: u32,
}

/// The configured pools and how to reach them.
#[derive(Debug)]
pub struct Php {
    pools: Vec<Pool>,
    script: PathBuf,
    secret: Option<String>,
    mount: PathBuf,
    timeout: Duration,
    fpm_owner: u32,
    http_owner: u32,
    /// Invalidations of two switches never interleave.
    serial: Mutex<()>,
    /// Bumped by every `sync` before it waits for `serial`: an earlier one still comparing
    /// or sending sees it and stops, so an emergency rollback does not queue behind it.
    latest: std::sync::atomic::AtomicU64,
}

impl Php {
    /// Validates the configuration.
    ///
    /// # Errors
    /// A one-line message: bad address or URL, secret file missing, empty or readable by
    /// others, script missing.
    pub fn new(config: &PhpConfig, mount: &Path) -> Result<Php, String> {
        let mut pools = Vec::new();
        for s in &config.fpm {
            let addr = Address::parse(s).map_err(|e| format!("--php-fpm {e}"))?;
            pools.push(Endpoint::Fpm(addr));
        }
        for s in &config.http {
            pools.push(Endpoint::Http(
                HttpUrl::parse(s).map_err(|e| format!("--php-http {e}"))?,
            ));
        }
        let secret = match (&config.secret_file, config.http.is_empty()) {
            (Some(file), _) => Some(read_secret(file)?),
            (None, false) => {
                return Err("--php-http needs --php-http-secret FILE (the secret the \
                            endpoint's SetEnv SWITCHFS_SECRET holds)"
                    .into());
            }
            (None, true) => None,
        };
        if !config.fpm.is_empty() && !config.script.is_file() {
            return Err(format!(
                "--php-script {}: no such file (the package and scripts/install put it at {DEFAULT_SCRIPT})",
                config.script.display()
            ));
        }
        Ok(Php {
            pools: pools
                .into_iter()
                .map(|endpoint| Pool {
                    endpoint,
                    state: Mutex::new(PoolState::default()),
                })
                .collect(),
            script: config.script.clone(),
            secret,
            mount: mount.to_path_buf(),
            timeout: config.timeout,
            fpm_owner: config.fpm_owner,
            http_owner: config.http_owner,
            serial: Mutex::new(()),
            latest: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Pools start in step with the release active at start-up: they cached it (or nothing)
    /// before this daemon ran. (A failure before a restart is not remembered across it.)
    pub(crate) fn assume_in_step_with(&self, active: &Active) {
        let active = active.release.clone();
        for pool in &self.pools {
            pool.state.lock().synced = active.clone();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Brings every pool up to date with `new`, the release `core` now shows, pools in
    /// parallel.
    ///
    /// # Errors
    /// One line naming each pool that failed and why; the pools that worked are done.
    ///
    /// A later `sync` (the next switch) makes this one stop at its next look (see
    /// `Turn`): the pool is then marked unknown and the later one invalidates everything
    /// it caches under the mount, so nothing stale survives the cut.
    pub(crate) fn sync(&self, core: &dyn Docroot, new: Option<Arc<Release>>) -> Result<(), String> {
        self.sync_current(core, &|| new.clone())
    }

    /// As `sync`, for the release `current` names once this call has its turn: a retry
    /// (`switchctl php-sync`) reads the active release only then, so a switch published
    /// after that read takes a later turn and wins, and one published before is what it
    /// syncs. (Read before the turn, a retry could bring the pools "up to date" with a
    /// release a concurrent switch had just replaced.)
    ///
    /// # Errors
    /// As `sync`.
    pub(crate) fn sync_current(
        &self,
        core: &dyn Docroot,
        current: &dyn Fn() -> Option<Arc<Release>>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let turn = Turn {
            latest: &self.latest,
            mine: self.latest.fetch_add(1, Ordering::SeqCst) + 1,
        };
        let _serial = self.serial.lock();
        let Some(new) = current() else {
            return Ok(());
        };
        let failures: Vec<String> = std::thread::scope(|scope| {
            let running: Vec<_> = self
                .pools
                .iter()
                .map(|pool| scope.spawn(|| self.sync_pool(core, pool, &new, &turn)))
                .collect();
            running
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(r) => r.err(),
                    Err(_) => Some("OPcache invalidation thread panicked".to_string()),
                })
                .collect()
        });
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn sync_pool(
        &self,
        core: &dyn Docroot,
        pool: &Pool,
        new: &Arc<Release>,
        turn: &Turn<'_>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let old = pool.state.lock().synced.clone();
        let mut run = LastRun {
            at: SystemTime::now(),
            release: new.name.clone(),
            cached: 0,
            changed: 0,
            invalidated: 0,
            gone: 0,
            took: Duration::ZERO,
            error: None,
        };
        let result = self.invalidate_changed(core, pool, old.as_ref(), new, &mut run, turn);
        run.took = started.elapsed();
        let mut state = pool.state.lock();
        match result {
            Ok(()) => {
                log::info!(
                    "{}: {} of {} cached scripts changed by release {}, invalidated {} \
                     ({} deleted ones left cached) in {:.1} ms",
                    pool.endpoint,
                    run.changed,
                    run.cached,
                    new.name,
                    run.invalidated,
                    run.gone,
                    run.took.as_secs_f64() * 1000.0
                );
                state.synced = Some(new.clone());
                state.last = Some(run);
                Ok(())
            }
            Err(e) => {
                let msg = format!("OPcache of {} not invalidated: {e}", pool.endpoint);
                log::warn!("{msg}");
                state.synced = None;
                run.error = Some(e);
                state.last = Some(run);
                Err(msg)
            }
        }
    }

    fn invalidate_changed(
        &self,
        core: &dyn Docroot,
        pool: &Pool,
        old: Option<&Arc<Release>>,
        new: &Arc<Release>,
        run: &mut LastRun,
        turn: &Turn<'_>,
    ) -> Result<(), String> {
        // One deadline for the whole pool (connect, list, the comparison, every invalidate
        // request), so a slow or hostile pool holds `activate` --php-timeout at most, plus
        // the wait for compilations in flight.
        let deadline = Instant::now() + self.timeout;
        let (first, processes) = match &pool.endpoint {
            // Connected first: the listener's pid (SO_PEERCRED) is the master, whose children
            // are the only processes whose compilations matter.
            Endpoint::Fpm(addr) => {
                let conn = self.connect_fpm(addr, deadline)?;
                // Pid 0: the master lives in a pid namespace this daemon cannot see into.
                let master = conn.peer.as_ref().map(|p| p.pid).filter(|&pid| pid > 0);
                (Some(conn), master.map_or_else(Vec::new, fpm_processes))
            }
            Endpoint::Http(_) => (None, apache_processes()),
        };
        let waited = wait_for_compiles(core, new, &processes, self.timeout)?;
        let deadline = deadline + waited;
        // A connection left idle through a long wait may have been dropped by the pool's
        // worker that accepted it: connect again then.
        let first = first.filter(|_| waited < COMPILE_WAIT_NOTICE);
        let pass = Pass {
            old,
            new,
            deadline,
            turn,
        };
        self.list_and_invalidate(core, pool, first, &pass, run)?;
        // A request that resolved a script before the switch can open and compile it only
        // after the wait above looked (the path lookup and the open are two steps), and store
        // the old bytecode after our invalidation. Look once more: if a pool process has an
        // old script open now, wait for it and invalidate again.
        if !processes.is_empty() && !old_scripts_open(core, new, &processes).is_empty() {
            let late = wait_for_compiles(core, new, &processes, self.timeout)?;
            log::info!(
                "{}: a compilation of an earlier release started during the switch; \
                 invalidating again after waiting {late:?} for it",
                pool.endpoint
            );
            let pass = Pass {
                deadline: deadline + late,
                ..pass
            };
            self.list_and_invalidate(core, pool, None, &pass, run)?;
        }
        Ok(())
    }

    /// Lists what `pool` caches under the mount and invalidates the scripts the switch from
    /// `pass.old` to `pass.new` changed (see `script_changed`), adding to `run`'s counts.
    /// The comparison looks at the deadline and for a later switch every `CHECK_EVERY`
    /// paths: it is the part a long list makes slow.
    fn list_and_invalidate(
        &self,
        core: &dyn Docroot,
        pool: &Pool,
        first: Option<fastcgi::Connection>,
        pass: &Pass<'_>,
        run: &mut LastRun,
    ) -> Result<(), String> {
        pass.go_on("listing")?;
        let listing = self.call(&pool.endpoint, first, "list", &[], pass.deadline)?;
        let (cached, capped) = parse_list(&listing, MAX_LISTED)?;
        let prefix = self.mount.as_os_str().as_bytes();
        // Entries outside the mount are none of this daemon's business: neither invalidated
        // nor counted, whatever the pool claims.
        let mut too_deep = 0usize;
        let under: Vec<(Option<i64>, &Path, &[u8])> = cached
            .iter()
            .filter_map(|&(ts, path)| Some((ts, under_mount(path, prefix)?, path)))
            .filter(|(_, rel, _)| {
                let deep = rel.components().nth(MAX_DEPTH).is_some();
                too_deep += usize::from(deep);
                !deep
            })
            .collect();
        if capped || too_deep > 0 {
            log::warn!(
                "{}: the list of cached scripts {}; ignored them",
                pool.endpoint,
                match (capped, too_deep) {
                    (true, 0) => format!("has more than {MAX_LISTED} entries"),
                    (false, n) => format!("has {n} paths deeper than {MAX_DEPTH} directories"),
                    (true, n) => format!(
                        "has more than {MAX_LISTED} entries and {n} paths deeper than \
                         {MAX_DEPTH} directories"
                    ),
                }
            );
        }
        run.cached = run.cached.max(under.len());
        let mut changed: Vec<&[u8]> = Vec::new();
        for (i, (ts, rel, path)) in under.iter().enumerate() {
            if i % CHECK_EVERY == 0 {
                pass.go_on(&format!("comparing {i} of {} cached scripts", under.len()))?;
            }
            if script_changed(core, pass.old, pass.new, rel, *ts) {
                changed.push(path);
            }
        }
        run.changed = run.changed.max(changed.len());
        for chunk in changed.chunks(PATHS_PER_REQUEST) {
            pass.go_on("invalidating")?;
            let body = chunk.join(&0u8);
            let answer = self.call(&pool.endpoint, None, "invalidate", &body, pass.deadline)?;
            let (invalidated, gone) = parse_counts(&answer)?;
            run.invalidated += invalidated;
            run.gone += gone;
        }
        Ok(())
    }

    /// Connects to a `--php-fpm` pool and checks who listens there.
    ///
    /// Why: the root daemon must not take orders from whoever replaced the socket (on Debian
    /// `/run/php` belongs to www-data, so the pool's user can). An impostor could answer
    /// the list with nothing (old bytecode stays forever) or with a flood of paths. The
    /// PHP-FPM master creates its listening sockets as root; the kernel records the uid of
    /// the process that called `listen()`, which no other user can fake.
    fn connect_fpm(
        &self,
        addr: &Address,
        deadline: Instant,
    ) -> Result<fastcgi::Connection, String> {
        let conn = fastcgi::connect(addr, deadline).map_err(|e| describe_io(&e))?;
        if let Some(found) = conn.tcp_listener_uid() {
            check_tcp_owner(found, self.fpm_owner, "--php-fpm-owner")?;
        }
        if let Some(peer) = &conn.peer
            && peer.uid != self.fpm_owner
        {
            return Err(format!(
                "the socket is served by uid {} (pid {}), not uid {}: not the PHP-FPM \
                 master (see --php-fpm-owner)",
                peer.uid, peer.pid, self.fpm_owner
            ));
        }
        Ok(conn)
    }

    /// Runs one step of the shipped script on `endpoint` (on `conn`, already connected, if
    /// given); the body of a 200 answer.
    fn call(
        &self,
        endpoint: &Endpoint,
        conn: Option<fastcgi::Connection>,
        step: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, String> {
        let mount = self.mount.to_string_lossy();
        let (status, answer) = match endpoint {
            Endpoint::Fpm(addr) => {
                let script = self.script.to_string_lossy();
                let length = body.len().to_string();
                let params = [
                    ("GATEWAY_INTERFACE", "CGI/1.1"),
                    ("SERVER_SOFTWARE", "switchfs"),
                    ("SERVER_PROTOCOL", "HTTP/1.1"),
                    ("REQUEST_METHOD", "POST"),
                    ("SCRIPT_FILENAME", &script),
                    ("SCRIPT_NAME", "/switchfs-opcache-invalidate.php"),
                    ("REQUEST_URI", "/switchfs-opcache-invalidate.php"),
                    ("CONTENT_TYPE", "application/octet-stream"),
                    ("CONTENT_LENGTH", &length),
                    ("SWITCHFS_OPCACHE", "1"),
                    ("HTTP_X_SWITCHFS_STEP", step),
                    ("HTTP_X_SWITCHFS_MOUNT", &mount),
                ];
                let conn = match conn {
                    Some(c) => c,
                    None => self.connect_fpm(addr, deadline)?,
                };
                let resp = conn
                    .request(&params, body, deadline)
                    .map_err(|e| describe_io(&e))?;
                if !resp.stderr.is_empty() {
                    log::debug!("{endpoint} said on stderr: {}", first_line(&resp.stderr));
                }
                let (status, answer) = resp.status_and_body();
                (status, answer.to_vec())
            }
            Endpoint::Http(url) => {
                let secret = self.secret.as_deref().unwrap_or("");
                http_post(url, self.http_owner, secret, step, &mount, body, deadline)?
            }
        };
        if status != 200 || !answer.starts_with(MAGIC) {
            let hint = if status == 404 {
                " (the script refused the request or is not there: check --php-script, \
                 or the endpoint's SetEnv SWITCHFS_SECRET)"
            } else {
                ""
            };
            return Err(format!(
                "step {step}: HTTP {status}: {}{hint}",
                first_line(&answer)
            ));
        }
        Ok(answer[MAGIC.len()..].to_vec())
    }

    /// Whether the last invalidation of any pool failed (what `activate` of the active
    /// release retries).
    pub(crate) fn any_failed(&self) -> bool {
        self.pools.iter().any(|pool| {
            pool.state
                .lock()
                .last
                .as_ref()
                .is_some_and(|r| r.error.is_some())
        })
    }

    /// Each pool and its last invalidation, for `switchctl status`.
    pub(crate) fn pools_status(&self) -> Vec<PoolStatus> {
        self.pools
            .iter()
            .map(|pool| PoolStatus {
                endpoint: pool.endpoint.to_string(),
                last: pool.state.lock().last.clone(),
            })
            .collect()
    }
}

// ---- `switchctl prepare` (issue 20): every pool reached and checked, nothing invalidated ----

impl Php {
    /// What `prepare NAME` checks of the pools: each is reached within `--php-timeout`, its
    /// listener's owner checked (as `sync` does, before anything is sent), and what it caches
    /// under the mount compared with `new` (read-only: nothing is invalidated). Nothing is
    /// kept for the `activate` that follows: the pool caches more scripts until the switch,
    /// so the switch lists them again rather than trust an older list.
    ///
    /// # Errors
    /// The first pool that cannot be reached or is not served by its owner: one line.
    pub(crate) fn prepare(&self, core: &dyn Docroot, new: &Arc<Release>) -> Result<String, String> {
        let mut summary = Vec::new();
        for pool in &self.pools {
            let deadline = Instant::now() + self.timeout;
            let fail = |e: String| format!("OPcache of {} cannot be told: {e}", pool.endpoint);
            let conn = match &pool.endpoint {
                Endpoint::Fpm(addr) => Some(self.connect_fpm(addr, deadline).map_err(fail)?),
                Endpoint::Http(_) => None,
            };
            let listing = self
                .call(&pool.endpoint, conn, "list", &[], deadline)
                .map_err(fail)?;
            let (cached, _) = parse_list(&listing, MAX_LISTED).map_err(fail)?;
            let old = pool.state.lock().synced.clone();
            let prefix = self.mount.as_os_str().as_bytes();
            let under: Vec<(Option<i64>, &Path)> = cached
                .iter()
                .filter_map(|&(ts, path)| Some((ts, under_mount(path, prefix)?)))
                .filter(|(_, rel)| rel.components().nth(MAX_DEPTH).is_none())
                .collect();
            let changed = under
                .iter()
                .filter(|(ts, rel)| script_changed(core, old.as_ref(), new, rel, *ts))
                .count();
            summary.push(format!(
                "{}: {changed} of {} cached scripts would be invalidated",
                pool.endpoint,
                under.len()
            ));
        }
        Ok(summary.join("; "))
    }
}

/// One pool as `status` shows it.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// `php-fpm ADDRESS` or `php-http URL`.
    pub endpoint: String,
    /// `None` before the first switch since the daemon started.
    pub last: Option<LastRun>,
}

/// Waits until none of `processes` (the pool's) holds a script of another release than
/// `new` open, at most `limit` (--php-timeout); how long it waited.
///
/// # Errors
/// One still holds one after `limit`: the pool then fails like an unreachable one (exit 3),
/// since answering "invalidated" would leave that compilation's old bytecode cached.
///
/// Why: a request that began compiling a script of the old release before the switch stores
/// its bytecode when the compilation ends, possibly after the pool listed what it caches;
/// with validate_timestamps=0 that old bytecode would then stay. PHP keeps a script open
/// while it compiles it and closes it after storing the result, so once none is open, every
/// such compilation is in the list. Only the pool's own processes count: any other user
/// who can read the docroot could otherwise hold a file open to slow every switch down.
/// Costs one look at each pool process's descriptors when nothing is compiling.
fn wait_for_compiles(
    core: &dyn Docroot,
    new: &Arc<Release>,
    processes: &[i32],
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    if processes.is_empty() {
        return Ok(Duration::ZERO);
    }
    let mut noticed = false;
    loop {
        let held = old_scripts_open(core, new, processes);
        if held.is_empty() {
            return Ok(started.elapsed());
        }
        let waited = started.elapsed();
        if waited >= limit {
            // Asking the pool now would be answered before that compilation stores its
            // bytecode, which would then serve the old release under the path for as long
            // as OPcache keeps it (forever with validate_timestamps=0): fail, visibly.
            return Err(format!(
                "{} of an earlier release was still open in the pool after {limit:?} (a \
                 compilation in flight would cache it stale); retry the invalidation once it \
                 has finished",
                held[0].display()
            ));
        }
        if !noticed && waited >= COMPILE_WAIT_NOTICE {
            noticed = true;
            log::info!(
                "scripts of an earlier release are still open in the pool after {waited:?} \
                 ({}); waiting up to {limit:?}",
                held[0].display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The PHP scripts of releases other than `new` that `processes` hold open.
fn old_scripts_open(core: &dyn Docroot, new: &Arc<Release>, processes: &[i32]) -> Vec<PathBuf> {
    core.open_paths_outside(new, processes)
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(OsStr::to_str)
                .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e))
        })
        .collect()
}

/// The part of an OPcache key `path` under the mount point `prefix`, when it is made of
/// plain names only (OPcache keys are real paths: anything else did not come from it).
fn under_mount<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a Path> {
    let rel = path.strip_prefix(prefix)?.strip_prefix(b"/")?;
    rel.split(|&b| b == b'/')
        .all(|name| !name.is_empty() && name != b"." && name != b"..")
        .then(|| Path::new(OsStr::from_bytes(rel)))
}

/// A PHP-FPM master and its workers (its children).
fn fpm_processes(master: i32) -> Vec<i32> {
    let mut pids = vec![master];
    pids.extend(
        process_table()
            .into_iter()
            .filter(|p| p.ppid == master)
            .map(|p| p.pid),
    );
    pids
}

/// Apache's processes, for `--php-http` (mod_php compiles in Apache's own processes):
/// those named apache2 or httpd (`/proc/PID/comm`) whose parent is an Apache parent, one so
/// named whose own parent is not, and that parent. A heuristic: the endpoint is a URL,
/// which tells no pid; a process renamed otherwise is not waited for.
fn apache_processes() -> Vec<i32> {
    apache_pids(&process_table())
}

/// The Apache parents and their children in `table` (see [`apache_processes`]).
fn apache_pids(table: &[ProcessEntry]) -> Vec<i32> {
    let named = |p: &ProcessEntry| APACHE_NAMES.contains(&p.comm.as_str());
    let is_apache = |pid: i32| table.iter().any(|p| p.pid == pid && named(p));
    let parents: Vec<i32> = table
        .iter()
        .filter(|p| named(p) && !is_apache(p.ppid))
        .map(|p| p.pid)
        .collect();
    let mut pids = parents.clone();
    pids.extend(
        table
            .iter()
            .filter(|p| named(p) && parents.contains(&p.ppid))
            .map(|p| p.pid),
    );
    pids
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, PartialEq, Eq)]
struct ProcessEntry {
    pid: i32,
    ppid: i32,
    comm: String,
}

/// Every process of /proc (those that vanish while read are left out).
fn process_table() -> Vec<ProcessEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses, so it ends at the
/// last `)`.
fn parse_stat(pid: i32, stat: &[u8]) -> Option<ProcessEntry> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let ppid = rest.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessEntry { pid, ppid, comm })
}

/// Whether the script OPcache cached at `rel` (under the mount) differs in `new`.
fn script_changed(
    core: &dyn Docroot,
    old: Option<&Arc<Release>>,
    new: &Arc<Release>,
    rel: &Path,
    cached_mtime: Option<i64>,
) -> bool {
    let Ok(now) = core.file_view(new, rel) else {
        return true; // deleted, or no longer a plain file
    };
    let mtime_rule = core.mtimes_tell_content();
    if let Some(ts) = cached_mtime {
        // What validate_timestamps would find, without waiting for revalidate_freq. Where
        // equal mtimes do not mean equal content (bind mode), an equal one is only a hint.
        if ts != now.reported_mtime || mtime_rule {
            return ts != now.reported_mtime;
        }
    }
    let Some(old) = old else {
        return true; // what the pool cached since its last failure is unknown
    };
    if Arc::ptr_eq(old, new) {
        return false;
    }
    match core.file_view(old, rel) {
        // Same inode (hard-linked releases): unchanged. Another inode with the same reported
        // mtime: same content, by the registry's rule. Otherwise compare the bytes: with
        // validate_timestamps=0 OPcache never looks at mtimes, so a file rewritten with the
        // same content (a fresh checkout) keeps its bytecode.
        // Without the registry's rule (bind mode: real mtimes), an equal mtime proves
        // nothing and the bytes decide.
        Ok(before) => {
            (before.dev, before.ino) != (now.dev, now.ino)
                && (before.reported_mtime != now.reported_mtime || !mtime_rule)
                && (before.size != now.size || !same_content(&before.fd, &now.fd))
        }
        Err(_) => true,
    }
}

/// Whether two files hold the same bytes; any read error counts as different (one
/// recompilation, never a stale script).
fn same_content(a: &std::os::fd::OwnedFd, b: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let open = |fd: &std::os::fd::OwnedFd| {
        crate::sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)
    };
    let (Ok(mut fa), Ok(mut fb)) = (open(a), open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = match read_full(&mut fa, &mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let nb = match read_full(&mut fb, &mut bb) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The `list` answer: `validate_timestamps N`, `scripts`, then `MTIME PATH\0` entries
/// (`-` for no recorded mtime).
/// One cached script: the mtime OPcache recorded for it (if any) and its full path.
type Cached<'a> = (Option<i64>, &'a [u8]);

/// At most `cap` entries are taken; the flag tells whether there were more.
fn parse_list(body: &[u8], cap: usize) -> Result<(Vec<Cached<'_>>, bool), String> {
    let bad = || "malformed answer to step list".to_string();
    let start = find(body, b"scripts\n").ok_or_else(bad)? + b"scripts\n".len();
    let mut entries = body[start..].split(|&b| b == 0).filter(|e| !e.is_empty());
    let taken = entries
        .by_ref()
        .take(cap)
        .map(|entry| {
            let sp = entry.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let ts = match &entry[..sp] {
                b"-" => None,
                t => Some(
                    std::str::from_utf8(t)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or_else(bad)?,
                ),
            };
            Ok((ts, &entry[sp + 1..]))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((taken, entries.next().is_some()))
}

/// The `invalidate` answer: `(invalidated, gone)`.
fn parse_counts(body: &[u8]) -> Result<(usize, usize), String> {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("malformed answer to step invalidate (no {name})"))
    };
    Ok((field("invalidated ")?, field("gone ")?))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        "(empty answer)".into()
    } else {
        line
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::NotFound => format!("cannot connect: {e} (is PHP running?)"),
        io::ErrorKind::ConnectionRefused => format!("cannot connect: {e} (is PHP running?)"),
        _ => e.to_string(),
    }
}

/// Reads the shared secret of `--php-http`: one line, refused when others may read it.
fn read_secret(file: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| format!("--php-http-secret {shown}: {e}"))?;
    if meta.mode() & 0o007 != 0 {
        return Err(format!(
            "--php-http-secret {shown} is readable by every user (mode {:o}); chmod o-rwx it",
            meta.mode() & 0o7777
        ));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--php-http-secret {shown}: {e}"))?;
    let secret = text.trim();
    if secret.len() < 16 || secret.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "--php-http-secret {shown}: expected one line of at least 16 characters without spaces"
        ));
    }
    Ok(secret.to_string())
}

/// Refuses a TCP listener that does not belong to `owner` (`option` names the uid), before
/// anything is sent: another user on the port would get the secret or answer for the pool.
fn check_tcp_owner(found: io::Result<Option<u32>>, owner: u32, option: &str) -> Result<(), String> {
    match found {
        Ok(Some(uid)) if uid == owner => Ok(()),
        Ok(Some(uid)) => Err(format!(
            "the port is listened on by uid {uid}, not uid {owner}: not the server \
             expected, nothing sent (see {option})"
        )),
        Ok(None) => Err(format!(
            "cannot tell who listens on the port (not in /proc/net/tcp); nothing sent \
             (see {option})"
        )),
        Err(e) => Err(format!("cannot tell who listens on the port: {e}")),
    }
}

/// One HTTP/1.0 POST (the answer then ends with the connection: no chunking to decode),
/// after checking the listener belongs to `owner`.
#[allow(clippy::too_many_arguments)] // one request: where, who must listen, what to send
fn http_post(
    url: &HttpUrl,
    owner: u32,
    secret: &str,
    step: &str,
    mount: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<(u16, Vec<u8>), String> {
    let s = fastcgi::connect_tcp(&url.host_port, deadline).map_err(|e| describe_io(&e))?;
    check_tcp_owner(
        crate::php::tcp_owner::listener_uid(&s),
        owner,
        "--php-http-owner",
    )?;
    http_exchange(s, url, secret, step, mount, body, deadline).map_err(|e| describe_io(&e))
}

fn http_exchange(
    mut s: std::net::TcpStream,
    url: &HttpUrl,
    secret: &str,
    step: &str,
    mount: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: switchfs\r\nX-Switchfs-Secret: {secret}\r\n\
         X-Switchfs-Step: {step}\r\nX-Switchfs-Mount: {mount}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        url.path,
        url.host,
        body.len()
    );
    s.set_write_timeout(Some(fastcgi::remaining(deadline)?))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        s.set_read_timeout(Some(fastcgi::remaining(deadline)?))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            Err(e) => return Err(e),
        }
        if answer.len() > fastcgi::MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer larger than 128 MiB",
            ));
        }
    }
    let status = answer
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    let body = match find(&answer, b"\r\n\r\n") {
        Some(i) => answer[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback_http() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/switchfs/opcache.php").unwrap();
        assert_eq!(u.host_port, "127.0.0.1:8080");
        assert_eq!(u.path, "/switchfs/opcache.php");
        assert_eq!(
            HttpUrl::parse("http://localhost/x.php").unwrap().host_port,
            "localhost:80"
        );
        assert!(HttpUrl::parse("http://[::1]:81/x").is_ok());
        assert!(HttpUrl::parse("https://127.0.0.1/x").is_err());
        assert!(HttpUrl::parse("http://10.0.0.1/x").is_err());
        assert!(HttpUrl::parse("http://example.com/x").is_err());
        assert!(HttpUrl::parse("http://127.0.0.1/a b").is_err());
    }

    #[test]
    fn list_answers() {
        let body = b"validate_timestamps 1\nscripts\n17 /m/a.php\0- /m/b c.php\0";
        let got = parse_list(body, 10).unwrap();
        assert_eq!(
            got,
            (
                vec![(Some(17), &b"/m/a.php"[..]), (None, &b"/m/b c.php"[..])],
                false
            )
        );
        assert_eq!(
            parse_list(body, 1).unwrap(),
            (vec![(Some(17), &b"/m/a.php"[..])], true),
            "capped, and said so"
        );
        assert!(parse_list(b"garbage", 10).is_err());
        assert!(parse_list(b"scripts\nx /m/a.php\0", 10).is_err());
        assert_eq!(
            parse_counts(b"invalidated 3\nnot_cached 1\ngone 2\n").unwrap(),
            (3, 2)
        );
        assert!(parse_counts(b"invalidated x\n").is_err());
    }

    #[test]
    fn only_plain_paths_under_the_mount_count() {
        let m = b"/var/www/current";
        assert_eq!(
            under_mount(b"/var/www/current/public/index.php", m),
            Some(Path::new("public/index.php"))
        );
        for outside in [
            &b"/etc/passwd"[..],
            b"/var/www/current",
            b"/var/www/current/",
            b"/var/www/currentx/a.php",
            b"/var/www/current/../x.php",
            b"/var/www/current/a/./b.php",
        ] {
            assert_eq!(under_mount(outside, m), None, "{outside:?}");
        }
    }

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat(7, b"7 (php-fpm: pool (www)) S 1 7 7 0 -1"),
            Some(ProcessEntry {
                pid: 7,
                ppid: 1,
                comm: "php-fpm: pool (www)".into()
            })
        );
        assert_eq!(parse_stat(7, b"7 apache2 S 1"), None);
    }

    #[test]
    fn apache_parent_and_its_children_only() {
        let p = |pid, ppid, comm: &str| ProcessEntry {
            pid,
            ppid,
            comm: comm.into(),
        };
        let table = [
            p(1, 0, "systemd"),
            p(10, 1, "apache2"),
            p(11, 10, "apache2"),
            p(12, 10, "apache2"),
            p(13, 10, "rotatelogs"),
            p(14, 11, "apache2"), // a grandchild: not a request worker
            p(20, 1, "php-fpm8.2"),
            p(30, 1, "sh"),
            p(31, 30, "httpd"),
            p(32, 31, "httpd"),
        ];
        assert_eq!(apache_pids(&table), vec![10, 31, 11, 12, 32]);
    }
}
