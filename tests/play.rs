//! Playing through the command line, with separate processes: three stations joined by
//! bootstrap, a program ingested into the first, played from the third at full speed (bytes
//! equal, a handoff at every boundary, several engines, all verified), from an offset (the
//! right segment, byte-identical from there), and in real time without a stall.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vodmesh_tests::{NodeProcess, bin, issuer_of, random_file, subscriber, vodmesh};

/// Plays through `node` with the console logged in under `dir/console`.
fn play(
    node: &NodeProcess,
    args: &[&str],
    dir: &Path,
) -> anyhow::Result<(Vec<u8>, serde_json::Value)> {
    vodmesh_tests::play_args(&node.addr, &dir.join("console"), args, dir, "played")
}

#[test]
fn a_program_plays_from_another_station_with_handoffs_and_seeks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "3",
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
        ],
    )?;
    let boot = home.addr.to_string();
    let issuer = issuer_of(&dir.path().join("home"))?;
    let second = NodeProcess::start(
        &dir.path().join("second"),
        &[
            "--engines",
            "2",
            "--bootstrap",
            &boot,
            "--record-ttl",
            "10",
            "--trust",
            &issuer,
        ],
    )?;
    let via = second.addr.to_string();
    let third = NodeProcess::start(
        &dir.path().join("third"),
        &[
            "--engines",
            "2",
            "--bootstrap",
            &via,
            "--record-ttl",
            "10",
            "--trust",
            &issuer,
        ],
    )?;
    subscriber(
        &home.addr,
        &dir.path().join("home/identity.key"),
        &dir.path().join("console"),
        "ann",
    )?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 48 * 1024 * 1024, 21)?;
    let key = dir.path().join("home/identity.key");
    let out = vodmesh(&[
        "ingest",
        "--node",
        &boot,
        "--key",
        &key.to_string_lossy(),
        "--title",
        "forty-eight",
        "--publish-at",
        "now",
        &source.to_string_lossy(),
    ])?;
    let program = out.lines().last().unwrap_or_default().to_string();
    assert_eq!(program.len(), 64, "last line is the program id: {out}");

    // Full speed, from the third station (which holds nothing: it finds the holder).
    let (played, stats) = play(&third, &["--speed", "max", "forty-eight"], dir.path())?;
    assert!(played == bytes, "bytes played differ from bytes ingested");
    assert_eq!(stats["segments"], 12);
    assert_eq!(
        stats["handoffs"], 11,
        "a handoff at every segment boundary: {stats}"
    );
    assert!(
        stats["engines"].as_array().map_or(0, Vec::len) >= 2,
        "{stats}"
    );
    assert_eq!(stats["verified"], true);

    // Seek: at the nominal 8 Mbit/s, 10 s in is byte 10 000 000 (in segment 2 of 4 MiB
    // segments); playback starts there and is byte-identical to the source from there on.
    let (played, stats) = play(
        &third,
        &["--speed", "max", "--start", "10", &program],
        dir.path(),
    )?;
    let from = bytes.len() - played.len();
    assert!(
        (9_999_000..=10_001_000).contains(&from),
        "--start 10 played from byte {from}"
    );
    assert!(
        played == bytes[from..],
        "playback from --start 10 differs from the source"
    );
    assert_eq!(stats["segments"], 10);
    Ok(())
}

#[test]
fn real_time_playback_of_a_short_program_never_stalls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &["--engines", "2", "--home", "--content-manager", "--auth"],
    )?;
    subscriber(
        &home.addr,
        &dir.path().join("home/identity.key"),
        &dir.path().join("console"),
        "bo",
    )?;
    let source = dir.path().join("short.bin");
    // 8 segments of 128 KiB at 2 Mbit/s: 0.52 s each, 4.2 s of media.
    let bytes = random_file(&source, 1024 * 1024, 22)?;
    let key = dir.path().join("home/identity.key");
    vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &key.to_string_lossy(),
        "--title",
        "short",
        "--publish-at",
        "now",
        "--segment-size",
        "131072",
        "--bitrate",
        "2000000",
        &source.to_string_lossy(),
    ])?;
    let started = std::time::Instant::now();
    let (played, stats) = play(
        &home,
        &["--speed", "1", "--buffer", "0.5", "short"],
        dir.path(),
    )?;
    let took = started.elapsed();
    assert!(played == bytes);
    assert_eq!(stats["stalls"], 0, "{stats}");
    // Paced by media time (half a second buffered ahead), not dumped at once.
    assert!(
        took.as_millis() >= 3000,
        "real time playback took only {took:?}"
    );
    Ok(())
}

#[test]
fn an_unpublished_program_is_refused_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &["--home", "--content-manager", "--auth"],
    )?;
    let source = dir.path().join("p.bin");
    random_file(&source, 100_000, 23)?;
    let key = dir.path().join("home/identity.key");
    vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &key.to_string_lossy(),
        "--title",
        "later",
        &source.to_string_lossy(),
    ])?;
    let out = Command::new(bin("vodmesh-console"))
        .args([
            "play",
            "--node",
            &home.addr.to_string(),
            "--out",
            "-",
            "later",
        ])
        .output()?;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: program not published\n"
    );
    assert!(
        out.stdout.is_empty(),
        "bytes of an unpublished program were sent"
    );
    Ok(())
}

#[test]
fn no_token_or_a_copied_token_plays_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &["--engines", "2", "--home", "--content-manager", "--auth"],
    )?;
    let untrusting = NodeProcess::start(
        &dir.path().join("untrusting"),
        &["--engines", "1", "--bootstrap", &home.addr.to_string()],
    )?;
    let console = dir.path().join("console");
    subscriber(
        &home.addr,
        &dir.path().join("home/identity.key"),
        &console,
        "cy",
    )?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 2 * 1024 * 1024, 24)?;
    let key = dir.path().join("home/identity.key");
    vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &key.to_string_lossy(),
        "--title",
        "guarded",
        "--publish-at",
        "now",
        &source.to_string_lossy(),
    ])?;
    let refused = |home_dir: &Path| -> anyhow::Result<String> {
        let out = Command::new(bin("vodmesh-console"))
            .env("VODMESH_HOME", home_dir)
            .args([
                "play",
                "--node",
                &home.addr.to_string(),
                "--speed",
                "max",
                "--out",
                "-",
                "guarded",
            ])
            .output()?;
        assert!(!out.status.success());
        assert!(
            out.stdout.is_empty(),
            "bytes were sent without a valid token"
        );
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    // No login at all.
    assert_eq!(
        refused(&dir.path().join("anonymous"))?,
        "error: no token: log in first (vodmesh-console login)"
    );
    // The token file copied to another console (another identity).
    let thief = dir.path().join("thief");
    std::fs::create_dir_all(thief.join("tokens"))?;
    std::fs::copy(
        console.join("tokens/console.token"),
        thief.join("tokens/console.token"),
    )?;
    assert_eq!(refused(&thief)?, "error: token belongs to another peer");
    // The rightful console plays.
    let (played, stats) = play(&home, &["--speed", "max", "guarded"], dir.path())?;
    assert!(played == bytes);
    assert_eq!(stats["verified"], true);
    drop(untrusting);
    Ok(())
}

/// Drives `vodmesh-console play` on a pseudo-terminal the way a viewer does: waits for the
/// progress line to show two segments played, presses space (pause), space (resume), right (seek +30 s) and, once a
/// segment from the new position is written, q (quit).
const VIEWER: &str = r#"
import os, pty, select, sys, time
console, node, out, stats, program = sys.argv[1:6]
pid, fd = pty.fork()
if pid == 0:
    os.execv(console, [console, "play", "--node", node, "--speed", "1", "--out", out,
                       "--stats", stats, program])
seen = b""
def wait_for(pattern, timeout):
    global seen
    seen = b""
    end = time.time() + timeout
    while pattern not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
        if not ready:
            sys.exit("no %r on the terminal; it shows %r" % (pattern, seen[-300:]))
        try:
            seen += os.read(fd, 4096)
        except OSError:
            sys.exit("the console ended early: %r" % seen[-300:])
def wait_for_more_than(mib, timeout):
    end = time.time() + timeout
    while True:
        wait_for(b"MiB", max(0.1, end - time.time()))
        shown = [float(w) for w, unit in zip(seen.split()[:-1], seen.split()[1:])
                 if unit.startswith(b"MiB") and w.replace(b".", b"").isdigit()]
        if shown and shown[-1] > mib:
            return
wait_for(b"2.0 MiB", 60)
os.write(fd, b" ")
wait_for(b"paused", 10)
os.write(fd, b" ")
wait_for(b"playing", 10)
os.write(fd, b"\x1b[C")
wait_for_more_than(2.0, 20)
os.write(fd, b"q")
while True:
    try:
        if not os.read(fd, 4096):
            break
    except OSError:
        break
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn keys_on_a_terminal_pause_seek_and_quit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &["--engines", "2", "--home", "--content-manager", "--auth"],
    )?;
    let console_home = dir.path().join("console");
    subscriber(
        &home.addr,
        &dir.path().join("home/identity.key"),
        &console_home,
        "cy",
    )?;
    const MIB: usize = 1024 * 1024;
    let source = dir.path().join("long.bin");
    // 8 segments of 1 MiB at 1 Mbit/s: 8.4 s each, 67 s of media.
    let bytes = random_file(&source, 8 * MIB, 24)?;
    let key = dir.path().join("home/identity.key");
    vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &key.to_string_lossy(),
        "--title",
        "long",
        "--publish-at",
        "now",
        "--segment-size",
        &MIB.to_string(),
        "--bitrate",
        "1000000",
        &source.to_string_lossy(),
    ])?;
    let out = dir.path().join("played.bin");
    let stats = dir.path().join("stats.json");
    let viewer = Command::new("python3")
        .env("VODMESH_HOME", &console_home)
        .args(["-c", VIEWER])
        .arg(bin("vodmesh-console"))
        .arg(home.addr.to_string())
        .arg(&out)
        .arg(&stats)
        .arg("long")
        .output()?;
    assert!(
        viewer.status.success(),
        "{}",
        String::from_utf8_lossy(&viewer.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
    assert_eq!(stats["quit"], true, "{stats}");
    assert_eq!(stats["seeks"], 1, "{stats}");
    // The first two segments, then the source's bytes from the seek's target on (30 s past
    // a position of a few seconds: beyond byte 3 750 000 at 1 Mbit/s), byte-identical.
    let played = std::fs::read(&out)?;
    assert!(played.len() > 2 * MIB);
    assert!(played[..2 * MIB] == bytes[..2 * MIB]);
    let rest = &played[2 * MIB..];
    let resumed_at = bytes
        .windows(64)
        .position(|w| rest.starts_with(w))
        .filter(|x| bytes[*x..].starts_with(rest));
    assert!(
        resumed_at.is_some_and(|x| x >= 3_750_000),
        "after the seek the bytes are not the source's from 30 s on: {resumed_at:?}"
    );
    // Quitting left no stream open on the station's engines.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = vodmesh_client::DirectorClient::connect(&home.addr, None).await?;
        vodmesh_tests::wait_until("every stream to stop", Duration::from_secs(20), || async {
            match client
                .request(vodmesh_proto::director::Request::Activity)
                .await?
            {
                vodmesh_proto::director::Response::Activity(a) => Ok(a.active == 0),
                other => anyhow::bail!("unexpected {other:?}"),
            }
        })
        .await
    })?;
    Ok(())
}
