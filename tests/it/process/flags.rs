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
