//! `vodmesh` keygen and demo, as a user runs them (this test also makes cargo build the
//! binary that the multi-process tests in `tests/` drive).

use std::process::Command;

#[test]
fn keygen_writes_a_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("admin.key");
    let out = Command::new(env!("CARGO_BIN_EXE_vodmesh"))
        .args(["keygen", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let peer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(peer.starts_with("12D3KooW"), "not a peer id: {peer}");
    let key = vodmesh_node::identity::load(&out_file).unwrap();
    assert_eq!(key.public().to_peer_id().to_string(), peer);
    let again = Command::new(env!("CARGO_BIN_EXE_vodmesh"))
        .args(["keygen", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error: "));
}

#[test]
fn demo_runs_and_lists_three_stations() {
    let out = Command::new(env!("CARGO_BIN_EXE_vodmesh"))
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 station(s)"), "{stdout}");
}
