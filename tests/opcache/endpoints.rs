//! The two endpoints: the shipped script refuses what a web server forwards, and
//! `--php-http` reaches PHP's own server with the secret.

use super::*;

/// The shipped script answers only switchfs: a request a web server could forward (no
/// SWITCHFS_OPCACHE parameter, or it sent as a client header) gets a 404 and changes
/// nothing.
#[test]
fn shipped_script_refuses_what_a_web_server_forwards() {
    require_php();
    let fx = Fixture::new("opc-refuse");
    let now = unix_now();
    write_app(&fx, "1", Some(now - 7200));
    let probe = write_probe(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = fx.start(&["--initial", "1"]);
    warm(&fpm, &fx, "1");
    let before = fpm.opcache(&probe);
    let script = script();
    let mount = fx.mnt().display().to_string();
    let base = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_FILENAME", script.as_str()),
        ("HTTP_X_SWITCHFS_MOUNT", mount.as_str()),
        ("HTTP_X_SWITCHFS_STEP", "list"),
        ("REMOTE_ADDR", "127.0.0.1"),
    ];
    for extra in [
        None,
        Some(("HTTP_SWITCHFS_OPCACHE", "1")),
        Some(("HTTP_X_SWITCHFS_SECRET", "guess")),
        Some(("SWITCHFS_OPCACHE", "yes")),
    ] {
        let mut params = base.to_vec();
        params.extend(extra);
        let answer = fpm.request(&params);
        assert!(answer.starts_with("HTTP 404: "), "{extra:?}: {answer}");
    }
    let after = fpm.opcache(&probe);
    assert_eq!(
        after.hits(&fx.m("public/index.php")),
        before.hits(&fx.m("public/index.php")),
        "still cached, untouched"
    );
}

/// `--php-http`: the same through an HTTP endpoint (how Apache + mod_php is served), here
/// PHP's built-in server with OPcache on and validate_timestamps=0, the endpoint routed to
/// the shipped script and everything else served from the mount. A wrong secret is a 404.
#[test]
fn php_http_endpoint_with_secret() {
    require_php();
    let fx = Fixture::new("opc-http");
    let now = two_apps(&fx);
    write_app(&fx, "3", Some(now - 1800));
    open_up(&fx);
    let router = fx.root.join("router.php");
    std::fs::write(
        &router,
        format!(
            "<?php if ($_SERVER['REQUEST_URI'] === '/switchfs-opcache') {{ require '{}'; }}\n\
             return false;\n",
            script()
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = "s3cr3t-0123456789abcdef";
    let url = format!("http://127.0.0.1:{port}/switchfs-opcache");
    let good = fx.root.join("secret");
    let bad = fx.root.join("bad-secret");
    for (file, text) in [(&good, secret), (&bad, "not-the-secret-at-all")] {
        std::fs::write(file, format!("{text}\n")).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bad_arg = bad.display().to_string();
    let d = fx.start(&[
        "--initial",
        "1",
        "--php-http",
        &url,
        "--php-http-secret",
        &bad_arg,
    ]);
    let mut server = Command::new("php")
        .args([
            "-d",
            "zend_extension=opcache.so",
            "-d",
            "opcache.enable=1",
            "-d",
            "opcache.enable_cli=1",
            "-d",
            "opcache.validate_timestamps=0",
            "-S",
            &format!("127.0.0.1:{port}"),
            "-t",
        ])
        .arg(fx.m("public"))
        .arg(&router)
        .env("PHP_INI_SCAN_DIR", "")
        .env("SWITCHFS_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Kill(&mut server);
    let get = || -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "10"])
            .arg(format!("http://127.0.0.1:{port}/index.php"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(" pid=")
            .next()
            .unwrap_or("")
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().is_empty() {
        assert!(Instant::now() < deadline, "php -S did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(get(), "entry=1 lib=1 same=ok");
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(one_line_error(&out).contains("HTTP 404"), "{out:?}");
    assert_eq!(get(), "entry=1 lib=1 same=ok", "stale: nothing invalidated");
    drop(d);

    let good_arg = good.display().to_string();
    let _d = fx.start(&["--php-http", &url, "--php-http-secret", &good_arg]);
    let out = fx.ctl(&["activate", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get(), "entry=3 lib=3 same=ok");
    let status = stdout(&fx.ctl(&["status"]));
    assert!(
        status.contains(&format!("php-http {url}: ")) && status.contains("release 3, 2 of 3"),
        "{status}"
    );
    drop(server);
}
