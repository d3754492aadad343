//! `vodmesh-console` explains itself and fails clearly (this test also makes cargo build the
//! binary that the multi-process tests in `tests/` drive).

#[test]
fn unreachable_director_is_one_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vodmesh-console"))
        .args([
            "ping",
            "--node",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDJRw7J4sst4Ry2CpyGPsVcNLbBGBLiH8UWw1vuxuXXhQ",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot reach the director"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
