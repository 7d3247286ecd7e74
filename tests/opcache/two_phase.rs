//! Issue 20 with a real PHP-FPM pool: `prepare` reaches the pool, checks its owner and counts
//! what a switch would invalidate, without invalidating anything; `activate --at` tells the
//! pool after the publish, as `activate` does, so the next request runs the new code.

use super::*;

#[test]
fn prepare_counts_what_the_pool_would_drop_and_activate_at_tells_it_after_the_instant() {
    require_php();
    let fx = Fixture::new("opc-2phase");
    let now = unix_now();
    write_app(&fx, "1", Some(now - 7200));
    write_app(&fx, "2", Some(now - 3600));
    for rel in ["1", "2"] {
        set_all_mtimes(&fx.releases().join(rel).join("lib/same.php"), now - 9000);
    }
    let probe = write_probe(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let changed = fx.m("public/index.php");
    let before = fpm.opcache(&probe);
    let hits = before
        .hits(&changed)
        .expect("index.php cached while warming");

    let out = fx.ctl(&["prepare", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("release 2 can be activated; php-fpm ")
            && text.contains("cached scripts would be invalidated"),
        "{text}"
    );
    // Nothing was invalidated: the script counts on, release 1 still runs.
    warm(&fpm, &fx, "1");
    let after = fpm.opcache(&probe);
    assert!(
        after.hits(&changed).is_some_and(|h| h >= hits + 20),
        "prepare invalidated nothing ({hits} -> {:?})",
        after.hits(&changed)
    );

    let out = fx.ctl(&["activate", "2", "--at", "+0.5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).starts_with("switched from 1 to 2 at "));
    let lines = front(&fpm, &fx, 10);
    assert!(
        all_release(&lines, "2"),
        "requests right after activate --at returned: {lines:?}\n{}",
        d.log_text()
    );
}
