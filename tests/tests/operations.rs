//! Running `cpis-node` as a service manager does: `check-config` and its exit codes, the
//! readiness and stopping notices of a `Type=notify` unit, and owner-only data files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_protocol::harness::FederationSpec;
use cpis_tests::Fed;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

const NODE: &str = env!("CARGO_BIN_EXE_cpis-node-under-test");
/// `EX_CONFIG`: the unit files do not restart a node that exits with it.
const EXIT_BAD_CONFIG: i32 = 78;

fn spec() -> FederationSpec {
    FederationSpec::new("operations").hub("HUBN").authority("204", "Hackney", &["HUBN"])
}

fn check_config(config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(NODE).args(["check-config", "--config"]).arg(config).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config__valid_0__missing_key_or_bad_field_78_naming_it__and_run_refuses_alike() {
    let fed = Fed::create(spec());
    let config = fed.write_node_config("204");
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("a valid authority config for 204"), "{stdout}");

    let key = fed.node_config("204").key_path();
    std::fs::rename(&key, key.with_extension("away")).unwrap();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, EXIT_BAD_CONFIG, "{stderr}");
    assert!(stderr.contains("key file") && stderr.contains(&key.display().to_string()), "{stderr}");
    let run = Command::new(NODE).args(["run", "--config"]).arg(&config).output().unwrap();
    assert_eq!(run.status.code(), Some(EXIT_BAD_CONFIG), "run refuses the same config with the same code");
    std::fs::rename(key.with_extension("away"), &key).unwrap();

    // MESH over HTTPS with a CA file that is readable but holds no certificate: refused before
    // starting (the node would fail on it when it starts handing notifications on).
    let home = fed.home("204");
    for (name, text) in [("mesh.password", "password"), ("mesh.key", "key"), ("ca.pem", "not a certificate")] {
        std::fs::write(home.join(name), text).unwrap();
    }
    let text = std::fs::read_to_string(&config).unwrap();
    let mesh = "\n[mesh]\nurl = \"https://mesh.example.org\"\nmailbox = \"X26ABC1\"\npassword_file = \"mesh.password\"\n\
                shared_key_file = \"mesh.key\"\nto_mailbox = \"X26ABC2\"\nca_file = \"ca.pem\"\n";
    std::fs::write(&config, format!("{text}{mesh}")).unwrap();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, EXIT_BAD_CONFIG, "{stderr}");
    assert!(stderr.contains("mesh.ca_file") && stderr.contains("ca.pem"), "{stderr}");
    std::fs::write(&config, &text).unwrap();

    std::fs::write(&config, text.replacen("code = \"204\"", "code = \"not a code\"", 1)).unwrap();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, EXIT_BAD_CONFIG, "{stderr}");
    assert!(stderr.contains("`code`"), "the error names the field: {stderr}");
}

#[test]
fn run_under_a_service_manager__ready_then_stopping_notices__data_owner_only() {
    let fed = Fed::create(spec());
    let config = fed.write_node_config("HUBN");
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The log goes to a file, as under a service manager: no colours, fields greppable.
    let log_path = dir.path().join("node.log");
    let mut node = Command::new(NODE)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notice within 30 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    // Ready means listening: the API answers at once.
    let addr = std::fs::read_to_string(fed.home("HUBN").join("api.addr")).unwrap();
    std::net::TcpStream::connect(addr.trim()).expect("the API is listening when READY is sent");

    let home = fed.home("HUBN");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700, "data folder");
    for file in ["node.redb", "api.token", "metrics.token"] {
        assert_eq!(mode(&home.join(file)), 0o600, "{file}");
    }

    let term = Command::new("kill").args(["-TERM", &node.id().to_string()]).status().unwrap();
    assert!(term.success());
    let n = socket.recv(&mut buf).expect("a stopping notice");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let status = node.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a node told to stop exits 0");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("node running") && log.contains("code=HUBN"), "{log}");
    assert!(!log.contains('\u{1b}'), "no terminal colours in a log file: {log:?}");
}
