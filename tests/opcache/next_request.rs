//! Once `activate` returns, the next request runs the new code on every worker, whatever
//! `validate_timestamps` / `revalidate_freq`, unchanged scripts keep their bytecode, and a
//! script the release deleted is dropped (README "PHP, nginx and Apache settings").

use super::*;

#[test]
fn validate_timestamps_0_next_request_runs_the_new_release() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-noval",
        &["opcache.validate_timestamps=0"],
        None,
        false,
    );
}

#[test]
fn revalidate_freq_2_next_request_runs_the_new_release() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-freq",
        &["opcache.validate_timestamps=1", "opcache.revalidate_freq=2"],
        None,
        false,
    );
}

#[test]
fn identical_mtimes_with_validate_timestamps_0() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-same",
        &["opcache.validate_timestamps=0"],
        Some(1_700_000_000),
        false,
    );
}

#[test]
fn identical_mtimes_with_revalidate_freq_60() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-same60",
        &[
            "opcache.validate_timestamps=1",
            "opcache.revalidate_freq=60",
        ],
        Some(1_700_000_000),
        false,
    );
}

#[test]
fn revalidate_freq_0_keeps_working() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-freq0",
        &["opcache.validate_timestamps=1", "opcache.revalidate_freq=0"],
        None,
        false,
    );
}

/// With validate_timestamps=0 a file rewritten with the same bytes (a fresh checkout gives
/// it a new mtime) keeps its bytecode: the daemon compares contents.
#[test]
fn validate_timestamps_0_same_bytes_new_mtime_stays_warm() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-bytes",
        &["opcache.validate_timestamps=0"],
        None,
        true,
    );
}

/// A script the new release no longer has is dropped from OPcache too: under
/// validate_timestamps=0 an `include` of that path would otherwise still run it.
#[test]
fn deleted_script_is_dropped() {
    require_php();
    let fx = Fixture::new("opc-deleted");
    let now = two_apps(&fx);
    fx.write(
        "1",
        "public/old.php",
        "<?php echo 'old script of release 1';\n",
    );
    set_all_mtimes(&fx.releases().join("1/public/old.php"), now - 7200);
    let probe = fx.root.join("probe/cached.php");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(
        &probe,
        format!(
            "<?php echo opcache_is_script_cached('{}') ? 'cached' : 'not cached';\n",
            fx.m("public/old.php").display()
        ),
    )
    .unwrap();
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    assert_eq!(fpm.get(&fx.m("public/old.php")), "old script of release 1");
    assert_eq!(fpm.get(&probe), "cached");
    let out = fx.ctl(&["activate", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fpm.get(&probe),
        "not cached",
        "status: {}",
        stdout(&fx.ctl(&["status", "--json"]))
    );
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(json.contains("\"gone\":0"), "{json}");
}
