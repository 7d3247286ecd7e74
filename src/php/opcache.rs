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
//!    flight (`compile_wait`). `--php-fpm` speaks FastCGI (`fastcgi`), `--php-http` one
//!    HTTP POST (`http`).
//! 1. `list`: the shipped script (`dist/opcache-invalidate.php`, outside every docroot)
//!    returns the scripts OPcache holds under the mount point, with the mtime each was
//!    cached with (only recorded by OPcache when `validate_timestamps=1`). Listed paths
//!    outside the mount are ignored, and at most `MAX_LISTED` entries read, none deeper than
//!    `MAX_DEPTH` under the mount (one warning line when a pool lists more). What the script
//!    answers, and how it is read, is in `wire`.
//! 2. The daemon decides per cached path with the mtime registry's rule: the path is changed
//!    when the mount now reports another mtime than the one cached, or, without a cached
//!    mtime, when the file's identity differs between the release the pool was last
//!    brought up to date with and the new one and its reported mtime differs too (the
//!    registry never reports two contents with one mtime, and keeps the mtime of equal
//!    content). A path missing from the new release, or no longer a plain regular file, is
//!    changed. Cost: two descriptor walks per cached script, whatever the release's size.
//!    The comparison is `changes`.
//! 3. `invalidate`: the script calls `opcache_invalidate($path, true)` for those paths.
//!
//! Two requests rather than one: the comparison needs both release directories, which only
//! the daemon holds (through descriptors), and the PHP side stays a few lines of plain
//! OPcache calls. A failed pool is reported like a failing hook (the switch stays) and is
//! brought fully up to date at the next switch: every cached script under the mount is then
//! invalidated, since what it cached in between is unknown.
//!
//! This file is the orchestration: the pools, their state, one deadline and one turn per
//! switch, the two steps in order; each concern above lives in the module it names.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::php::changes::{script_changed, under_mount};
use crate::php::compile_wait::{
    COMPILE_WAIT_NOTICE, apache_processes, fpm_processes, old_scripts_open, wait_for_compiles,
};
use crate::php::fastcgi::{self, Address, describe_io};
pub use crate::php::http::HttpUrl;
use crate::php::http::http_post;
use crate::php::tcp_owner::check_tcp_owner;
use crate::php::wire::{MAGIC, PATHS_PER_REQUEST, first_line, parse_counts, parse_list};
use crate::switch::docroot::{Active, Docroot};
use crate::switch::release::Release;

/// Where the daemon finds the shipped script by default: the package and `scripts/install`
/// put it there (/usr/share, not /usr/local: a Debian package may not install into
/// /usr/local).
pub const DEFAULT_SCRIPT: &str = "/usr/share/switchfs/opcache-invalidate.php";
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
