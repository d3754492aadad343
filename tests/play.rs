//! Playing through the command line, with separate processes: three stations joined by
//! bootstrap, a program ingested into the first, played from the third at full speed (bytes
//! equal, a handoff at every boundary, several engines, all verified), from an offset (the
//! right segment, byte-identical from there), and in real time without a stall.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_tests::cli::{Ingest, Play, bin, subscriber};
use vodmesh_tests::console::Console;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{Node, NodeProcess, plain};
use vodmesh_tests::wait;

const MIB: usize = 1024 * 1024;
/// How long one attempt at a segment may take, as the console counts it (`fetch::ATTEMPT_LIMIT`).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(60);

/// A home station (auth, content manager) of `engines` engines under `dir/home`, and a
/// console logged in as subscriber `name` under `dir/console`.
fn home_and_console(
    dir: &Path,
    engines: usize,
    name: &str,
) -> Result<(NodeProcess, std::path::PathBuf)> {
    let home = Node::new(&dir.join("home"))
        .engines(engines)
        .home()
        .start()?;
    let console = dir.join("console");
    subscriber(&home.addr, &home.key(), &console, name)?;
    Ok((home, console))
}

#[test]
fn a_program_plays_from_another_station_with_handoffs_and_seeks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(3)
        .home()
        .ttl(10)
        .start()?;
    let second = Node::new(&dir.path().join("second"))
        .engines(2)
        .enrolled_with(&home)?
        .ttl(10)
        .start()?;
    // A member with no room for copies: a miss there sends the console to the holder, whose
    // three engines hand it over at every segment boundary.
    let third = Node::new(&dir.path().join("third"))
        .engines(2)
        .enrolled_with(&home)?
        .bootstrap(&second.addr)
        .args(&["--capacity", "1"])
        .ttl(10)
        .start()?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "ann")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 48 * 1024 * 1024, 21)?;
    // `Ingest::run` checks the last line is the program id.
    let program = Ingest::new(&home.addr, &home.key(), "forty-eight", &source)
        .publish_now()
        .run()?;

    // Full speed, from the third station (which holds nothing and takes no copy: it finds
    // the holder).
    let played = Play::new(&console, &third.addr, "forty-eight").run()?;
    let (played, stats) = (played.bytes, played.stats);
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
    let played = Play::new(&console, &third.addr, &program)
        .args(&["--start", "10"])
        .run()?;
    let (played, stats) = (played.bytes, played.stats);
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
fn real_time_playback_of_a_short_program_never_stalls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console) = home_and_console(dir.path(), 2, "bo")?;
    let source = dir.path().join("short.bin");
    // 8 segments of 128 KiB at 2 Mbit/s: 0.52 s each, 4.2 s of media.
    let bytes = random_file(&source, 1024 * 1024, 22)?;
    Ingest::new(&home.addr, &home.key(), "short", &source)
        .publish_now()
        .segment_size(131072)
        .bitrate(2_000_000)
        .run()?;
    let started = std::time::Instant::now();
    let played = Play::new(&console, &home.addr, "short")
        .speed("1")
        .args(&["--buffer", "0.5"])
        .run()?;
    let took = started.elapsed();
    assert!(played.bytes == bytes);
    assert_eq!(played.stats["stalls"], 0, "{}", played.stats);
    // Paced by media time (half a second buffered ahead), not dumped at once.
    assert!(
        took.as_millis() >= 3000,
        "real time playback took only {took:?}"
    );
    Ok(())
}

#[test]
fn an_unpublished_program_is_refused_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().start()?;
    let source = dir.path().join("p.bin");
    random_file(&source, 100_000, 23)?;
    let program = Ingest::new(&home.addr, &home.key(), "later", &source).run()?;
    // Refused (exit non-zero, no byte of the unpublished program written), in one line.
    let console = dir.path().join("anonymous");
    let refused = Play::new(&console, &home.addr, &program).refused()?;
    assert_eq!(refused, "error: program not published\n");
    // By title it is not even found: a console is not shown programs not published yet.
    let refused = Play::new(&console, &home.addr, "later").refused()?;
    assert_eq!(refused, "error: no program titled \"later\"\n");
    Ok(())
}

/// The output going away is the viewer's end of the play, not an error: a player that quits
/// after a few bytes (`head`) ends the play with status 0 and `quit` in its statistics; a
/// player that fails (status 3) is named in the one error line. A `--start` at or past the
/// program's end, or with credentials that cannot be read, is refused in one line and
/// leaves no empty `--out` file; one that is no
/// number of seconds is a usage error (status 2). The control: a play of the whole program.
#[test]
fn a_player_that_quits_ends_the_play_and_a_start_past_the_end_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console) = home_and_console(dir.path(), 1, "viewer")?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 2 * MIB, 41)?;
    // 2 MiB at 8 Mbit/s: a program of 2.1 s.
    let program = Ingest::new(&home.addr, &home.key(), "short", &source)
        .publish_now()
        .segment_size(MIB / 2)
        .run()?;
    let played = Play::new(&console, &home.addr, &program).run()?;
    assert!(played.bytes == bytes, "the control play differs");

    let stats = dir.path().join("quit.json");
    let out = Play::new(&console, &home.addr, &program)
        .player("head -c 1000 > /dev/null")
        .args(&["--stats", &stats.display().to_string()])
        .command()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
    assert_eq!(stats["quit"], true, "{stats}");
    let whole = bytes.len() as u64;
    assert!(
        stats["bytes"].as_u64().is_some_and(|b| b < whole),
        "{stats}"
    );

    let out = Play::new(&console, &home.addr, &program)
        .player("exit 3")
        .command()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr, "error: the player exited with status 3: exit 3\n");

    let file = dir.path().join("never.out");
    let out = Play::new(&console, &home.addr, &program)
        .out(&file)
        .args(&["--start", "100"])
        .command()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: --start 100 s is past the end of the program (2.0"),
        "{stderr}"
    );
    assert!(!file.exists(), "a refused play left {}", file.display());
    for start in ["--start=inf", "--start=nan", "--start=-1"] {
        let out = Play::new(&console, &home.addr, &program)
            .out(&file)
            .args(&[start])
            .command()
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{start}: {stderr}");
        assert!(
            stderr.contains("a number of seconds, 0 or more"),
            "{stderr}"
        );
    }
    // Credentials that cannot be read refuse the play (status 1, its stderr), and leave no
    // empty `--out` either.
    let broken = dir.path().join("broken-console");
    let refused = || -> Result<String> {
        let out = Play::new(&broken, &home.addr, &program)
            .out(&file)
            .command()
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!file.exists(), "a refused play left {}", file.display());
        Ok(stderr)
    };
    std::fs::create_dir_all(broken.join("tokens"))?;
    std::fs::write(broken.join("tokens/console.token"), b"junk")?;
    std::fs::write(broken.join("identity.key"), b"junk")?;
    let stderr = refused()?;
    assert!(stderr.contains("not a libp2p key file"), "{stderr}");
    // A damaged token beside a good identity: the file is named, why is said in words (not
    // the CBOR decoder's `Debug`), and what to do.
    std::fs::copy(console.join("identity.key"), broken.join("identity.key"))?;
    let stderr = refused()?;
    let token = broken.join("tokens/console.token");
    let said = format!(
        "error: console token {}: not a vodmesh token (",
        token.display()
    );
    assert!(stderr.starts_with(&said), "{stderr}");
    assert!(
        stderr.contains("log in again (vodmesh-console login)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Core(") && !stderr.contains('{'),
        "{stderr}"
    );
    Ok(())
}

/// SIGINT (Ctrl-C where no terminal takes keys) quits a play as `q` does: status 0, its
/// `--stats` written with `"quit": true`, the bytes played so far the program's first ones.
/// Before, the process died of the signal with no statistics written.
#[test]
fn an_interrupted_play_writes_its_statistics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console) = home_and_console(dir.path(), 1, "viewer")?;
    let source = dir.path().join("p.bin");
    // 4 MiB at 1 Mbit/s: a program of 33 s, of eight segments.
    let bytes = random_file(&source, 4 * MIB, 43)?;
    let program = Ingest::new(&home.addr, &home.key(), "long", &source)
        .publish_now()
        .segment_size(MIB / 2)
        .bitrate(1_000_000)
        .run()?;
    let play = Play::new(&console, &home.addr, &program)
        .speed("1")
        .args(&["--buffer", "1"])
        .files(dir.path(), "interrupted");
    let mut child = play.command().spawn()?;
    let out = dir.path().join("interrupted.out");
    wait::blocking("the first bytes played", Duration::from_secs(60), || {
        Ok(std::fs::metadata(&out).is_ok_and(|m| m.len() > 0))
    })?;
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -INT failed");
    let status = child.wait()?;
    assert_eq!(status.code(), Some(0));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("interrupted.json"))?)?;
    assert_eq!(stats["quit"], true, "{stats}");
    let played = std::fs::read(&out)?;
    assert!(
        !played.is_empty() && played.len() < bytes.len(),
        "{} bytes",
        played.len()
    );
    assert!(bytes.starts_with(&played), "the bytes played differ");
    Ok(())
}

#[test]
fn no_token_or_a_copied_token_plays_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console) = home_and_console(dir.path(), 2, "cy")?;
    let untrusting = Node::new(&dir.path().join("untrusting"))
        .engines(1)
        .bootstrap(&home.addr)
        .start()?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 2 * 1024 * 1024, 24)?;
    Ingest::new(&home.addr, &home.key(), "guarded", &source)
        .publish_now()
        .run()?;
    // Refused (exit non-zero, no byte written without a valid token), in one line.
    let refused = |home_dir: &Path| -> Result<String> {
        let stderr = Play::new(home_dir, &home.addr, "guarded").refused()?;
        Ok(stderr.trim().to_string())
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
    let played = Play::new(&console, &home.addr, "guarded").run()?;
    assert!(played.bytes == bytes);
    assert_eq!(played.stats["verified"], true);
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
fn keys_on_a_terminal_pause_seek_and_quit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console_home) = home_and_console(dir.path(), 2, "cy")?;
    let source = dir.path().join("long.bin");
    // 8 segments of 1 MiB at 1 Mbit/s: 8.4 s each, 67 s of media.
    let bytes = random_file(&source, 8 * MIB, 24)?;
    Ingest::new(&home.addr, &home.key(), "long", &source)
        .publish_now()
        .segment_size(MIB)
        .bitrate(1_000_000)
        .run()?;
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
        let director = Console::connect(&home.addr, None).await?;
        wait::until("every stream to stop", Duration::from_secs(20), || async {
            Ok(director.activity().await?.active == 0)
        })
        .await
    })?;
    Ok(())
}

/// The console's peak resident memory.
fn peak_rss(pid: u32) -> Result<u64> {
    vodmesh_tools::bench::status_bytes(pid, "VmHWM")
}

/// At `--speed max` a console holds no segment whole (issue 21): its player stops reading,
/// and each of its fetches (the segment playing and the two ahead of it) stops at its queue
/// of verified chunk groups, with the console's memory far below one segment of 48 MiB. It
/// plays on byte for byte once the player reads again, after a hold longer than an attempt
/// may take: no attempt is given up for the time it waited, and the streams the engine ended
/// meanwhile are resumed where their fetches stopped.
#[test]
fn a_console_whose_player_stops_reading_holds_no_segment_whole() -> Result<()> {
    const SEGMENT: usize = 48 * MIB;
    let dir = tempfile::tempdir()?;
    let (home, console) = home_and_console(dir.path(), 2, "held")?;
    let source = dir.path().join("held.bin");
    let bytes = random_file(&source, 3 * SEGMENT, 31)?;
    Ingest::new(&home.addr, &home.key(), "held", &source)
        .segment_size(SEGMENT)
        .publish_now()
        .run()?;

    let mut playing = Play::new(&console, &home.addr, "held")
        .to_stdout()
        .debug()
        .spawn()?;
    playing.read(MIB)?;
    let pid = playing.pid();
    // The player reads no more. Every fetch fills its queue and waits (the two ahead of the
    // playing segment say so); the console's peak memory stays under one segment all along.
    let waiting = |log: &str, index: u32| {
        log.lines().any(|l| {
            l.contains("the stream waits for the player") && l.contains(&format!("index={index}"))
        })
    };
    wait::blocking(
        "the fetches ahead to wait for the player",
        Duration::from_secs(120),
        || {
            let peak = peak_rss(pid)?;
            anyhow::ensure!(
                peak < SEGMENT as u64,
                "the console holds {} MiB, more than a segment",
                peak / MIB as u64
            );
            let log = plain(&playing.stderr().text());
            Ok(waiting(&log, 1) && waiting(&log, 2))
        },
    )
    .with_context(|| format!("the console's log:\n{}", playing.stderr().text()))?;
    // Held past an attempt's time limit (60 s, counted from before the fetches were seen
    // waiting) and past the engine's patience with a console that reads nothing (30 s, when
    // it ends the stream): the time a fetch waits for the player is not its attempt's, so
    // none is given up for it. (Before, each was dropped at the limit and asked again.)
    std::thread::sleep(ATTEMPT_LIMIT + Duration::from_secs(5));
    let log = plain(&playing.stderr().text());
    let timed_out: Vec<&str> = log.lines().filter(|l| l.contains("TimedOut")).collect();
    assert!(
        timed_out.is_empty(),
        "attempts given up while held: {timed_out:?}"
    );
    let peak = peak_rss(pid)?;
    assert!(peak < SEGMENT as u64, "peak {} MiB", peak / MIB as u64);
    eprintln!("the console's peak while held: {} KiB", peak / 1024);

    let played = playing.finish()?;
    assert!(
        played.bytes == bytes,
        "bytes played differ from bytes ingested"
    );
    assert_eq!(played.stats["segments"], 3, "{}", played.stats);
    assert_eq!(played.stats["verified"], true, "{}", played.stats);
    let log = plain(&played.log);
    // The engine ended the streams it could not write to for 30 s: their fetches asked again
    // and resumed where they stopped.
    let again: Vec<&str> = log.lines().filter(|l| l.contains("asking again")).collect();
    assert!(
        again
            .iter()
            .any(|l| l.contains("EndedEarly") || l.contains("BrokeOff")),
        "no fetch resumed a stream the engine ended: {again:#?}"
    );
    Ok(())
}
