//! Graceful drain, through real processes: a console plays at `--speed 1` with a 2 s buffer
//! from station b, which holds a complete replica; two segments in, b is drained, by SIGTERM
//! (it then stops by itself once its streams have ended) or by an admin's `vodmesh station
//! drain` (it keeps running and redirects). Either way the console finishes from the home
//! station with every byte, verified, and no stall.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use vodmesh_tests::cli::{Play, vodmesh};
use vodmesh_tests::process::Node;
use vodmesh_tests::replica::{HomeAndReplica, Program};
use vodmesh_tests::status;

const KIB: usize = 1024;

/// How station b is drained.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// SIGTERM: it drains, then stops.
    Sigterm,
    /// `vodmesh station drain`: it drains and keeps running.
    Admin,
}

#[test]
fn a_station_stopped_with_sigterm_hands_its_consoles_over_without_a_stall() -> Result<()> {
    drained_mid_play(How::Sigterm)
}

#[test]
fn a_station_drained_by_an_admin_hands_its_consoles_over_without_a_stall() -> Result<()> {
    drained_mid_play(How::Admin)
}

fn drained_mid_play(how: How) -> Result<()> {
    const SEGMENTS: u32 = 8;
    let dir = tempfile::tempdir()?;
    // Eight segments of 128 KiB at 1 Mbit/s: 8.4 s of media, replicated to b.
    let HomeAndReplica {
        home,
        mut b,
        console,
        bytes,
        ..
    } = HomeAndReplica::start(
        dir.path(),
        Node::new(&dir.path().join("home"))
            .engines(2)
            .home()
            .ttl(10),
        (Node::new(&dir.path().join("b")).engines(2).ttl(10)).args(&["--drain-timeout", "30"]),
        Program {
            title: "drained",
            segments: SEGMENTS,
            segment_size: 128 * KIB,
            bitrate: Some(1_000_000),
            seed: 61,
        },
    )?;

    let mut playing = Play::new(&console, &b.addr, "drained")
        .speed("1")
        .args(&["--buffer", "2"])
        .to_stdout()
        .spawn()?;
    // Two segments written: b serves the console until it drains.
    playing.read(2 * 128 * KIB)?;
    match how {
        How::Sigterm => b.signal("TERM")?,
        How::Admin => {
            let key = b.key();
            let said = vodmesh(&[
                "station",
                "drain",
                "--node",
                &b.addr.to_string(),
                "--key",
                &key.to_string_lossy(),
            ])?;
            assert!(said.contains("station draining"), "{said}");
            // `vodmesh status` says so, of b alone (the home is the control).
            let draining = |addr| -> Result<bool> {
                let station = status::station(addr)?;
                Ok(station["activity"]["draining"] == true)
            };
            assert!(draining(&b.addr)?, "b is not shown draining");
            assert!(!draining(&home.addr)?, "the home is shown draining");
            let text = vodmesh(&["status", "--node", &b.addr.to_string()])?;
            assert_eq!(text.matches("DRAINING").count(), 1, "{text}");
        }
    }
    let played = playing.finish()?;
    assert!(played.bytes == bytes, "played bytes differ");
    let stats = played.stats;
    assert_eq!(stats["verified"], true);
    assert_eq!(stats["segments"], SEGMENTS);
    assert_eq!(stats["stalls"], 0, "no stall across the drain: {stats}");
    let both: BTreeSet<String> = [b.peer(), home.peer()].into();
    assert_eq!(
        stats["stations"],
        serde_json::json!(both),
        "b served first, the home after the drain: {stats}"
    );
    match how {
        How::Sigterm => {
            // It stopped by itself, cleanly, once its last stream ended (not at the limit).
            assert!(b.wait_exit(Duration::from_secs(40))?, "b exited non-zero");
            let log = b.log();
            assert!(log.contains("SIGTERM: draining"), "{log}");
            assert!(log.contains("drained: no stream left"), "{log}");
        }
        How::Admin => {
            // Still running, still draining: it answers, and sends consoles elsewhere.
            let again = Play::new(&console, &b.addr, "drained")
                .files(dir.path(), "again")
                .run()?;
            assert!(again.bytes == bytes, "played bytes differ");
            assert_eq!(
                again.stats["stations"],
                serde_json::json!([home.peer()]),
                "a drained station serves nothing itself: {}",
                again.stats
            );
        }
    }
    Ok(())
}
