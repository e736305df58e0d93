//! The command line: every flag documented with its variable, and bad values refused naming the flag.

use std::process::Command;

use endcall_testkit::process::built_binary;

#[test]
fn help_documents_every_flag_with_its_variable() {
    let out = Command::new(built_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "ENDCALL_LISTEN"),
        ("--delete-room", "ENDCALL_DELETE_ROOM"),
        ("--end-instructions", "ENDCALL_END_INSTRUCTIONS"),
        ("--no-end-instructions", "ENDCALL_NO_END_INSTRUCTIONS"),
        ("--extra-description", "ENDCALL_EXTRA_DESCRIPTION"),
        ("--ignore-on-enter", "ENDCALL_IGNORE_ON_ENTER"),
        ("--reply-timeout", "ENDCALL_REPLY_TIMEOUT"),
        ("--early-reply-capture", "ENDCALL_EARLY_REPLY_CAPTURE"),
        ("--playout-guard", "ENDCALL_PLAYOUT_GUARD"),
        ("--wind-up-grace", "ENDCALL_WIND_UP_GRACE"),
        ("--wind-up-instructions", "ENDCALL_WIND_UP_INSTRUCTIONS"),
        ("--closed-retention", "ENDCALL_CLOSED_RETENTION"),
        ("--idle-expiry", "ENDCALL_IDLE_EXPIRY"),
        ("--max-sessions", "ENDCALL_MAX_SESSIONS"),
        ("--max-request-bytes", "ENDCALL_MAX_REQUEST_BYTES"),
        (
            "--max-concurrent-requests",
            "ENDCALL_MAX_CONCURRENT_REQUESTS",
        ),
        (
            "--max-requests-per-second",
            "ENDCALL_MAX_REQUESTS_PER_SECOND",
        ),
        ("--max-watchers", "ENDCALL_MAX_WATCHERS"),
        ("--metrics-listen", "ENDCALL_METRICS_LISTEN"),
        ("--shutdown-delay", "ENDCALL_SHUTDOWN_DELAY"),
        ("--drain-timeout", "ENDCALL_DRAIN_TIMEOUT"),
        ("--log-format", "ENDCALL_LOG_FORMAT"),
        ("--log-level", "ENDCALL_LOG_LEVEL"),
        ("--auth-token", "ENDCALL_AUTH_TOKEN"),
        ("--auth-token-file", "ENDCALL_AUTH_TOKEN_FILE"),
        ("--auth-health-exempt", "ENDCALL_AUTH_HEALTH_EXEMPT"),
        ("--tls-cert", "ENDCALL_TLS_CERT"),
        ("--tls-key", "ENDCALL_TLS_KEY"),
        ("--tls-client-ca", "ENDCALL_TLS_CLIENT_CA"),
        ("--livekit-url", "LIVEKIT_URL"),
        ("--livekit-api-key", "LIVEKIT_API_KEY"),
        ("--livekit-api-key-file", "ENDCALL_LIVEKIT_API_KEY_FILE"),
        ("--livekit-api-secret", "LIVEKIT_API_SECRET"),
        (
            "--livekit-api-secret-file",
            "ENDCALL_LIVEKIT_API_SECRET_FILE",
        ),
        (
            "--livekit-request-timeout",
            "ENDCALL_LIVEKIT_REQUEST_TIMEOUT",
        ),
        ("--livekit-retry-for", "ENDCALL_LIVEKIT_RETRY_FOR"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_flag() {
    let out = Command::new(built_binary())
        .args(["--reply-timeout", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reply-timeout"));
    let out = Command::new(built_binary())
        .args(["--log-level", "no=such=filter"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));
}

#[test]
fn bad_security_settings_exit_2_naming_the_flag() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().display().to_string();
    // (flags, variables, what the error must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&["--auth-token", "s3cret"], &[], "ENDCALL_AUTH_TOKEN"),
        (
            &["--auth-token-file", &empty],
            &[("ENDCALL_AUTH_TOKEN", "s3cret")],
            "--auth-token-file",
        ),
        (&["--auth-token-file", &empty], &[], "--auth-token-file"),
        (
            &["--auth-token-file", "/nonexistent/token"],
            &[],
            "/nonexistent/token",
        ),
        (&["--tls-cert", "/x.pem"], &[], "--tls-key"),
        (
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            &[],
            "--tls-cert /nonexistent/c.pem",
        ),
    ];
    for (flags, env, named) in cases {
        let out = Command::new(built_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{flags:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing announced: {flags:?}");
    }
}

/// LiveKit teardown needs the URL, the key and the secret together: any other mix, a malformed
/// URL, an unreadable file or a secret on the command line refuses the start, naming the
/// variable or flag, and the secret never shows.
#[test]
fn bad_livekit_settings_exit_2_naming_the_variable() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().display().to_string();
    const URL: (&str, &str) = ("LIVEKIT_URL", "wss://livekit.example.com");
    const KEY: (&str, &str) = ("LIVEKIT_API_KEY", "APIkey");
    const SECRET: (&str, &str) = ("LIVEKIT_API_SECRET", "s3cret");
    // (flags, variables, what the error must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 10] = [
        (&[], &[URL], "LIVEKIT_API_KEY"),
        (&[], &[URL, SECRET], "LIVEKIT_API_KEY"),
        (&[], &[URL, KEY], "LIVEKIT_API_SECRET"),
        (&[], &[KEY, SECRET], "LIVEKIT_URL"),
        (&[], &[SECRET], "LIVEKIT_URL"),
        (
            &["--livekit-url", "livekit.example.com:7880"],
            &[KEY, SECRET],
            "--livekit-url (LIVEKIT_URL) \"livekit.example.com:7880\": a scheme is needed",
        ),
        (
            &["--livekit-api-secret", "s3cret"],
            &[URL, KEY],
            "LIVEKIT_API_SECRET",
        ),
        (
            &["--livekit-api-secret-file", &empty],
            &[URL, KEY],
            "--livekit-api-secret-file",
        ),
        (
            &["--livekit-api-key-file", "/nonexistent/key"],
            &[URL, SECRET],
            "--livekit-api-key-file /nonexistent/key: cannot read",
        ),
        (
            &["--livekit-request-timeout", "0s"],
            &[URL, KEY, SECRET],
            "--livekit-request-timeout",
        ),
    ];
    for (flags, env, named) in cases {
        let out = Command::new(built_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .env_remove("LIVEKIT_URL")
            .env_remove("LIVEKIT_API_KEY")
            .env_remove("LIVEKIT_API_SECRET")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?} {env:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?} {env:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{flags:?} {env:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing announced: {flags:?} {env:?}"
        );
    }
}

/// With the three set (from files here, as a mounted Secret gives them), the sidecar starts;
/// LiveKit is not contacted until a teardown.
#[test]
fn complete_livekit_settings_start() {
    use std::io::Write as _;
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    secret.write_all(b"s3cret\n").unwrap();
    let mut key = tempfile::NamedTempFile::new().unwrap();
    key.write_all(b"APIkey\n").unwrap();
    let mut child = Command::new(built_binary())
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .args(["--livekit-url", "ws://127.0.0.1:9"])
        .arg("--livekit-api-key-file")
        .arg(key.path())
        .arg("--livekit-api-secret-file")
        .arg(secret.path())
        .env_remove("LIVEKIT_URL")
        .env_remove("LIVEKIT_API_KEY")
        .env_remove("LIVEKIT_API_SECRET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
