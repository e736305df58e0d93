//! One version for the sidecar, both client packages and the API: every place that states it
//! says the sidecar's (`Cargo.toml`), and `endcall-sidecar --version` reports it.

use std::{path::Path, process::Command};

use endcall_testkit::process::built_binary;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between the quotes that follow `prefix` on the first line starting with it.
fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let rest = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))?;
    let rest = rest.trim_start().strip_prefix('"')?;
    Some(rest.split('"').next()?.to_owned())
}

/// The version in `// Version X.Y.Z.` of the proto's header comment.
fn proto_version(text: &str) -> Option<String> {
    let rest = text.lines().find_map(|l| l.strip_prefix("// Version "))?;
    Some(
        rest.split_whitespace()
            .next()?
            .trim_end_matches('.')
            .to_owned(),
    )
}

/// The newest released version in the changelog: the first `## ` heading after `Unreleased`.
fn changelog_version(text: &str) -> Option<String> {
    let heading = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .find(|h| !h.starts_with("Unreleased"))?;
    Some(heading.split_whitespace().next()?.to_owned())
}

fn json_version(json: &serde_json::Value, pointer: &str) -> Option<String> {
    json.pointer(pointer)?.as_str().map(str::to_owned)
}

#[test]
fn every_version_string_is_the_sidecars() {
    let package: serde_json::Value =
        serde_json::from_str(&read("clients/node/package.json")).unwrap();
    let lock: serde_json::Value =
        serde_json::from_str(&read("clients/node/package-lock.json")).unwrap();
    let found = [
        (
            "clients/python/pyproject.toml",
            quoted_after(&read("clients/python/pyproject.toml"), "version ="),
        ),
        (
            "clients/python/src/endcall_sidecar/__init__.py (__version__)",
            quoted_after(
                &read("clients/python/src/endcall_sidecar/__init__.py"),
                "__version__ =",
            ),
        ),
        (
            "clients/node/package.json",
            json_version(&package, "/version"),
        ),
        (
            "clients/node/package-lock.json",
            json_version(&lock, "/version"),
        ),
        (
            "clients/node/package-lock.json (packages[\"\"])",
            json_version(&lock, "/packages//version"),
        ),
        (
            "proto/endcall/v1/endcall.proto (header)",
            proto_version(&read("proto/endcall/v1/endcall.proto")),
        ),
        (
            "CHANGELOG.md (newest release)",
            changelog_version(&read("CHANGELOG.md")),
        ),
        (
            "examples/node/package.json (the tarball it installs)",
            json_version(
                &serde_json::from_str(&read("examples/node/package.json")).unwrap(),
                "/dependencies/@endcall~1sidecar",
            )
            .map(|spec| {
                spec.trim_start_matches("file:../../clients/node/endcall-sidecar-")
                    .trim_end_matches(".tgz")
                    .to_owned()
            }),
        ),
    ];
    let wrong: Vec<String> = found
        .iter()
        .filter(|(_, v)| v.as_deref() != Some(VERSION))
        .map(|(file, v)| format!("{file}: {}", v.as_deref().unwrap_or("no version found")))
        .collect();
    assert!(
        wrong.is_empty(),
        "the sidecar is {VERSION}, but:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn version_flag_reports_the_version() {
    let out = Command::new(built_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("endcall-sidecar {VERSION}\n")
    );
}
