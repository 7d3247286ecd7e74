//! `--mode bind` with real PHP-FPM: the docroot reports the files' real mtimes, so the
//! daemon decides by bytes which cached scripts a switch changed. Releases with identical
//! mtimes are fresh right after `activate` returns, and unchanged scripts stay warm.

use super::*;

#[test]
fn bind_mode_identical_mtimes_with_validate_timestamps_0() {
    require_php();
    next_request_on(
        Fixture::bind("opc-bind0"),
        "opc-bind0",
        &["opcache.validate_timestamps=0"],
        Some(1_700_000_000),
        false,
    );
}

#[test]
fn bind_mode_identical_mtimes_with_revalidate_freq_2() {
    require_php();
    next_request_on(
        Fixture::bind("opc-bind2"),
        "opc-bind2",
        &["opcache.validate_timestamps=1", "opcache.revalidate_freq=2"],
        Some(1_700_000_000),
        false,
    );
}
