//! The command line: settings errors that name the setting, certificates,
//! and `sessmesh status`.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::process::Command;

use support::{BIN, certificates, start, tls_args};

/// Runs `sessmesh serve` with `args` and `env`, expecting it to refuse to
/// start; returns what it printed on stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} {env:?} must be refused"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_settings_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessmesh.toml");
    let cfg = config.to_str().unwrap();

    let stderr = refused(&["--development", "--resp-listen", "nope"], &[]);
    assert!(
        stderr.contains("invalid setting resp_listen: \"nope\" is not an address"),
        "{stderr}"
    );

    let stderr = refused(&["--development"], &[("SESSMESH_PARTITION_COUNT", "100")]);
    assert!(
        stderr.contains("invalid setting partition_count"),
        "{stderr}"
    );

    std::fs::write(&config, "development = true\nreplication_factr = 3\n").unwrap();
    let stderr = refused(&["--config", cfg], &[]);
    assert!(stderr.contains("replication_factr"), "{stderr}");

    std::fs::write(&config, "development = true\nread_level = \"most\"\n").unwrap();
    let stderr = refused(&["--config", cfg], &[]);
    assert!(
        stderr.contains("invalid setting read_level: \"most\""),
        "{stderr}"
    );
    // A flag overrides the file.
    let server = start(&["--config", cfg, "--read-level", "one"]);
    drop(server);

    let stderr = refused(&[], &[]);
    assert!(
        stderr.contains("invalid setting tls_ca: missing"),
        "{stderr}"
    );

    let missing = dir.path().join("none.pem");
    let m = missing.to_str().unwrap();
    let stderr = refused(&["--tls-ca", m, "--tls-cert", m, "--tls-key", m], &[]);
    assert!(stderr.contains("none.pem"), "{stderr}");
}

#[test]
fn certificates_from_the_cli_form_a_cluster_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), &["node-a", "node-b"]);
    let again = Command::new(BIN)
        .args(["certs", "init", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing CA is not overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let a_args = tls_args(dir.path(), "node-a");
    let a = start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut b_args = tls_args(dir.path(), "node-b");
    b_args.extend(["--seeds".into(), a.peer.to_string()]);
    let b = start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!((a.name.as_str(), b.name.as_str()), ("node-a", "node-b"));

    support::wait_for(
        "both members in the status table",
        std::time::Duration::from_secs(20),
        || {
            let out = Command::new(BIN)
                .args(["status", "--node", &a.http.to_string()])
                .output()
                .unwrap();
            let table = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && table.contains("MEMBER")
                && table.lines().any(|l| l.starts_with("node-a "))
                && table.lines().any(|l| l.starts_with("node-b "))
        },
    );
    let unreachable = Command::new(BIN)
        .args(["status", "--node", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));

    // A graceful stop: SIGTERM, the node leaves and exits cleanly.
    assert!(b.stop().success());
}
