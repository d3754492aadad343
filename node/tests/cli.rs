//! `vodmesh-node --help` explains itself (this test also makes cargo build the binary that
//! the multi-process tests in `tests/` drive).

#[test]
fn help_names_the_contract_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vodmesh-node"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data",
        "--listen",
        "--bootstrap",
        "--engines",
        "--record-ttl",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
