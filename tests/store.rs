//! Storage accounting and full stores, with real `vodmesh-node`, `vodmesh` and
//! `vodmesh-console` processes:
//!
//! - every engine's used bytes, after a clean stop (SIGTERM) and after SIGKILL, are what they
//!   were and what the segment files on disk add up to, and capacity decides the same;
//! - an ingest beyond a home station's capacity is refused at once with the figures, and
//!   leaves nothing; of two concurrent ingests that together do not fit, one succeeds whole;
//! - a disk that fills up from outside during an ingest fails it within seconds, nothing of
//!   it stays, and the station keeps serving what it holds;
//! - a full disk under a station's databases (its data directory, an engine's segment index)
//!   fails one ingest, and the next one works once there is room, without a restart;
//! - a copy into a full station evicts what other stations hold, or, with nothing evictable,
//!   is declined (counted) and the console is served by the holder;
//! - an ingest whose client is killed expires and its segments go; a station stopped
//!   mid-ingest drops the leftovers when it starts again;
//! - `vodmesh ingest --progress` prints lines when stderr is not a terminal;
//!   `vodmesh-console ls` says when nothing is published.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use vodmesh_tests::cli::{Ingest, Play, console, keygen, subscriber};
use vodmesh_tests::http::{Gate, HttpServer, hls_playlist};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{EngineProcess, Node, NodeProcess};
use vodmesh_tests::status::{self, programs, used_bytes};
use vodmesh_tests::stored::{bytes_on_disk, engine_segments, segment_bytes};
use vodmesh_tests::{require, wait};

const MIB: usize = 1024 * 1024;

/// `vodmesh ingest` of `source` into the station `node` as `title`, with its own key.
fn ingest(node: &NodeProcess, title: &str, source: impl AsRef<OsStr>) -> Ingest {
    Ingest::new(&node.addr, &node.key(), title, source)
}

/// Runs an ingest to its end (at most `limit`: a hang fails the test instead of blocking it).
async fn ingest_output(ingest: &Ingest, limit: Duration) -> Result<Output> {
    let child = ingest.command().spawn()?;
    let id = child.id();
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(out) => Ok(out??),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            bail!("vodmesh ingest did not return within {limit:?}")
        }
    }
}

/// The program id an ingest printed last, or its error line.
fn outcome(out: &Output) -> std::result::Result<String, String> {
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout.lines().last().unwrap_or_default().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `ingest` to its end; the program id, or an error with its error line.
async fn ingest_ok(ingest: &Ingest) -> Result<String> {
    let out = ingest_output(ingest, Duration::from_secs(120)).await?;
    outcome(&out).map_err(|e| anyhow::anyhow!("ingest failed: {e}"))
}

async fn ingest_refused(node: &NodeProcess, title: &str, source: &Path) -> Result<String> {
    let out = ingest_output(&ingest(node, title, source), Duration::from_secs(120)).await?;
    match outcome(&out) {
        Ok(id) => bail!("ingest of {title} succeeded ({id}); it should not fit"),
        Err(e) => Ok(e),
    }
}

/// Each engine's bytes on disk.
fn on_disk(data: &Path, engines: usize) -> Vec<u64> {
    (0..engines).map(|i| bytes_on_disk(data, i)).collect()
}

/// Waits until `vodmesh status` reports `want` as the engines' used bytes.
async fn wait_used(addr: &Multiaddr, want: &[u64], what: &str) -> Result<()> {
    let mut last = Vec::new();
    let waited = wait::until(what, Duration::from_secs(60), || {
        let got = used_bytes(addr);
        let done = got.as_ref().is_ok_and(|g| g == want);
        if let Ok(g) = got {
            last = g;
        }
        async move { Ok(done) }
    })
    .await;
    waited.with_context(|| format!("used bytes {last:?}, wanted {want:?}"))
}

/// Programs with a segment in the station's location table (`programs held` in `vodmesh
/// status`).
fn held(addr: &Multiaddr) -> Result<u64> {
    status::station(addr)?["programs"]
        .as_u64()
        .context("no programs held in vodmesh status")
}

/// Waits until `vodmesh status` shows the station holding segments of `want` programs (the
/// count a director answers stands for up to 2 s).
async fn wait_held(addr: &Multiaddr, want: u64, what: &str) -> Result<()> {
    let addr = addr.clone();
    wait::until_blocking(what, Duration::from_secs(20), move || {
        Ok(held(&addr)? == want)
    })
    .await
}

/// Whether `vodmesh status` shows no bytes reserved on any engine or disk of the station.
fn nothing_reserved(addr: &Multiaddr) -> Result<bool> {
    Ok(status::engines(addr)?.iter().all(|e| {
        e["reserved"] == 0
            && e["disks"]
                .as_array()
                .is_some_and(|d| d.iter().all(|d| d["reserved"] == 0))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_bytes_survive_sigterm_and_sigkill_and_capacity_decides_the_same() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    // 16 MiB per engine; the 30 MB program in 4 MiB segments spreads 3, 3 and 2 of
    // its 8 segments over the 3 engines.
    let args = [
        "--engines",
        "3",
        "--home",
        "--content-manager",
        "--capacity",
        "16777216",
    ];
    let a = dir.path().join("a.bin");
    random_file(&a, 30_000_000, 1)?;
    let too_big = dir.path().join("too-big.bin");
    random_file(&too_big, 24 * MIB, 2)?;
    let fits = dir.path().join("fits.bin");
    let fits_bytes = random_file(&fits, 16 * MIB, 3)?;

    let node = NodeProcess::start(&data, &args)?;
    let a_id = ingest_ok(&ingest(&node, "a", &a)).await?;
    let stored = vec![12_582_912, 9_028_480, 8_388_608];
    wait_used(&node.addr, &stored, "the first ingest counted").await?;
    assert_eq!(on_disk(&data, 3), stored, "figures are the files on disk");
    // 24 MiB against 20.3 MB left: refused, and why.
    let refusal = ingest_refused(&node, "too big", &too_big).await?;
    assert!(
        refusal.starts_with("error: not enough room on this home station")
            && refusal.contains("25165824 bytes")
            && refusal.contains("20331648 bytes"),
        "{refusal}"
    );

    // A clean stop, then a kill: the same figures, the same decision.
    assert!(node.terminate()?, "vodmesh-node exits 0 on SIGTERM");
    let node = NodeProcess::start(&data, &args)?;
    wait_used(&node.addr, &stored, "the figures after SIGTERM").await?;
    assert_eq!(on_disk(&data, 3), stored);
    assert!(nothing_reserved(&node.addr)?);
    assert_eq!(ingest_refused(&node, "too big", &too_big).await?, refusal);
    node.kill()?;
    let node = NodeProcess::start(&data, &args)?;
    wait_used(&node.addr, &stored, "the figures after SIGKILL").await?;
    assert_eq!(on_disk(&data, 3), stored);
    assert!(nothing_reserved(&node.addr)?);
    assert_eq!(ingest_refused(&node, "too big", &too_big).await?, refusal);

    // 16 MiB fit around engine 0, which has room for one more segment: it is filled to its
    // capacity exactly, the rest goes to the others, none is over.
    let fits_id = ingest_ok(&ingest(&node, "fits", &fits)).await?;
    let after = vec![16_777_216, 9_028_480 + 4_194_304, 8_388_608 + 8_388_608];
    wait_used(&node.addr, &after, "the second ingest counted").await?;
    assert_eq!(on_disk(&data, 3), after);
    let mut both = vec![a_id, fits_id.clone()];
    both.sort();
    assert_eq!(programs(&node.addr, Some(&node.key()))?, both);
    assert!(node.terminate()?);
    let (segments, _) = engine_segments(&data, 3, fits_id.parse()?).await?;
    let joined: Vec<u8> = segments.into_values().flatten().collect();
    assert!(
        joined == fits_bytes,
        "the program placed around the full engine is whole"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_beyond_capacity_is_refused_at_once_and_leaves_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let args = [
        "--engines",
        "2",
        "--home",
        "--content-manager",
        "--auth",
        "--capacity",
        "10000000",
    ];
    let node = NodeProcess::start(&data, &args)?;
    let source = dir.path().join("32mib.bin");
    random_file(&source, 32 * MIB, 4)?;
    // Issue 26: this never returned. The limit is only there to fail instead of hanging.
    let refusal = ingest_refused(&node, "too big", &source).await?;
    assert_eq!(refusal.lines().count(), 1, "one line: {refusal}");
    for part in [
        "error: not enough room",
        "needs 33.6 MB (33554432 bytes)",
        "20.0 MB (20000000 bytes) free",
        "engine 0: 10.0 MB, engine 1: 10.0 MB",
        "--capacity",
    ] {
        assert!(refusal.contains(part), "{part:?} missing from: {refusal}");
    }
    wait_used(&node.addr, &[0, 0], "nothing stored").await?;
    assert_eq!(on_disk(&data, 2), vec![0, 0]);
    assert!(programs(&node.addr, Some(&node.key()))?.is_empty());

    // Nothing is published: `ls` says so (on stderr, stdout stays a list) and exits 0.
    let ls = console(None, &dir.path().join("console"))
        .args(["ls", "--node", &node.addr.to_string()])
        .output()?;
    assert!(ls.status.success());
    assert!(ls.stdout.is_empty());
    let said = String::from_utf8_lossy(&ls.stderr);
    assert!(said.contains("no published program"), "{said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_ingests_that_do_not_fit_together_one_succeeds_whole() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let args = [
        "--engines",
        "2",
        "--home",
        "--content-manager",
        "--capacity",
        "10000000",
    ];
    let node = NodeProcess::start(&data, &args)?;
    // 12 MiB each: either fits in 2 x 10 MB, both do not.
    let sources: Vec<(PathBuf, Vec<u8>)> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("p{i}.bin"));
            random_file(&path, 12 * MIB, 10 + i).map(|b| (path, b))
        })
        .collect::<Result<_>>()?;
    let ingests: Vec<Ingest> = sources
        .iter()
        .enumerate()
        .map(|(i, (path, _))| ingest(&node, &format!("p{i}"), path))
        .collect();
    let runs = ingests
        .iter()
        .map(|i| ingest_output(i, Duration::from_secs(120)));
    let outs = futures::future::try_join_all(runs).await?;
    let results: Vec<_> = outs.iter().map(outcome).collect();
    let won: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one succeeds: {results:?}");
    let (winner, loser) = (won[0], 1 - won[0]);
    let refusal = results[loser].clone().err().unwrap_or_default();
    assert!(refusal.starts_with("error: not enough room"), "{refusal}");
    let winner_id = results[winner].clone().unwrap_or_default();

    // Only the winner is stored: its 12 MiB in all, on disk as in the figures.
    let used = used_bytes(&node.addr)?;
    assert_eq!(used.iter().sum::<u64>(), 12 * MIB as u64, "{used:?}");
    assert_eq!(on_disk(&data, 2), used);
    assert_eq!(
        programs(&node.addr, Some(&node.key()))?,
        vec![winner_id.clone()]
    );
    assert!(node.terminate()?);
    let (segments, _) = engine_segments(&data, 2, winner_id.parse()?).await?;
    let joined: Vec<u8> = segments.into_values().flatten().collect();
    assert!(joined == sources[winner].1, "the winner is whole");
    Ok(())
}

/// A program of 8 segments of 1 MiB served as an HLS playlist over http, whose segment 4
/// stalls once the ingest pushes it (after hashing): engine 0 of 2 takes 0 and 2, then
/// waits; engine 1 takes 1, 3, 5 and 7.
struct Stalled {
    server: HttpServer,
    gate: Gate,
    url: String,
}

async fn stalled_program() -> Result<Stalled> {
    let server = HttpServer::start().await?;
    let mut entries = Vec::new();
    let mut gate = None;
    for i in 0..8u8 {
        let name = format!("s/seg{i}.ts");
        let body: Vec<u8> = (0..MIB).map(|b| (b as u8).wrapping_mul(7) ^ i).collect();
        if i == 4 {
            gate = Some(server.put_gated(&name, body));
        } else {
            server.put(&name, body);
        }
        entries.push((format!("seg{i}.ts"), 2.0f32));
    }
    let refs: Vec<(&str, f32)> = entries.iter().map(|(u, d)| (u.as_str(), *d)).collect();
    server.put("s/index.m3u8", hls_playlist(&refs, None).into_bytes());
    let url = server.url("s/index.m3u8");
    let gate = gate.context("no gate")?;
    Ok(Stalled { server, gate, url })
}

/// Starts the stalling ingest and waits until the 6 segments before the stall are stored on
/// top of `before`.
async fn start_stalled(node: &NodeProcess, stalled: &Stalled, before: &[u64]) -> Result<Child> {
    let mut child = ingest(node, "stalled", &stalled.url).command().spawn()?;
    let want = [before[0] + 2 * MIB as u64, before[1] + 4 * MIB as u64];
    if let Err(e) = wait_used(&node.addr, &want, "the segments before the stall stored").await {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "{e:#}; the ingest said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_expires_and_a_station_stopped_mid_ingest_drops_the_leftovers() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let args = [
        "--engines",
        "2",
        "--home",
        "--content-manager",
        "--ingest-timeout",
        "3",
    ];
    let node = NodeProcess::start(&data, &args)?;
    let first = dir.path().join("first.bin");
    random_file(&first, 3 * MIB, 20)?;
    let first_id = ingest_ok(&ingest(&node, "first", &first)).await?;
    let before = used_bytes(&node.addr)?;
    assert_eq!(before.iter().sum::<u64>(), 3 * MIB as u64);

    // The client killed mid-way: after --ingest-timeout without progress, its segments go.
    let stalled = stalled_program().await?;
    let mut client = start_stalled(&node, &stalled, &before).await?;
    wait_held(
        &node.addr,
        2,
        "the location table to list the ingest's segments",
    )
    .await?;
    client.kill()?;
    client.wait()?;
    wait_used(&node.addr, &before, "the killed ingest's segments dropped").await?;
    assert_eq!(on_disk(&data, 2), before);
    assert_eq!(
        programs(&node.addr, Some(&node.key()))?,
        vec![first_id.clone()]
    );
    wait_held(&node.addr, 1, "the location table to list them no longer").await?;

    // The station stopped mid-ingest (SIGTERM, then SIGKILL), with a time-out too long to
    // matter: the next start drops the leftovers.
    let args = ["--engines", "2", "--home", "--content-manager"];
    let mut node = node;
    for kill in [false, true] {
        let mut client = start_stalled(&node, &stalled, &before).await?;
        assert_ne!(on_disk(&data, 2), before);
        if kill {
            node.kill()?;
        } else {
            assert!(node.terminate()?);
        }
        let _ = client.kill();
        client.wait()?;
        node = NodeProcess::start(&data, &args)?;
        wait_used(&node.addr, &before, "the leftovers dropped at start").await?;
        assert_eq!(on_disk(&data, 2), before, "after a stop (SIGKILL: {kill})");
        assert_eq!(
            programs(&node.addr, Some(&node.key()))?,
            vec![first_id.clone()]
        );
        wait_held(&node.addr, 1, "the leftovers out of the location table").await?;
    }

    // Nothing is stuck: the same program goes in whole once its source answers.
    stalled.gate.open();
    let done = ingest_ok(&ingest(&node, "stalled", &stalled.url)).await?;
    let mut ids = vec![first_id, done];
    ids.sort();
    assert_eq!(programs(&node.addr, Some(&node.key()))?, ids);
    drop(stalled.server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_progress_goes_to_a_log_as_lines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let node = NodeProcess::start(&data, &["--home", "--content-manager"])?;
    // Five segments, each answered a second late: the push lasts five seconds.
    let server = HttpServer::start().await?;
    let mut entries = Vec::new();
    for i in 0..5u8 {
        let name = format!("p/seg{i}.ts");
        server.put_slow(&name, vec![i; 200_000], Duration::from_millis(1000));
        entries.push((format!("seg{i}.ts"), 1.0f32));
    }
    let refs: Vec<(&str, f32)> = entries.iter().map(|(u, d)| (u.as_str(), *d)).collect();
    server.put("p/index.m3u8", hls_playlist(&refs, None).into_bytes());
    let slow = ingest(&node, "slow", server.url("p/index.m3u8")).args(&["--progress"]);
    let out = ingest_output(&slow, Duration::from_secs(120)).await?;
    let id = outcome(&out).map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ingest: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line in: {stderr}");
    for line in &lines {
        assert!(
            line.contains(" of 1.0 MB (") && line.contains("%), segments ") && line.ends_with("/s"),
            "{line}"
        );
    }
    assert_eq!(programs(&node.addr, Some(&node.key()))?, vec![id]);
    Ok(())
}

/// A tmpfs of `size` mounted at `path` for the life of the guard (a disk that can fill up).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where it cannot be mounted: not root (skipped everywhere), or a mount refused
    /// to root (skipped, but a failure under CI).
    fn mount(path: &Path, size: &str) -> Result<Option<Self>> {
        if !require::is_root() {
            require::skip_everywhere("cannot mount a tmpfs here (needs root)");
            return Ok(None);
        }
        std::fs::create_dir_all(path)?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::piped())
            .output()?;
        if !mounted.status.success() {
            let why = String::from_utf8_lossy(&mounted.stderr);
            require::skip(&format!("cannot mount a tmpfs: {}", why.trim()))?;
            return Ok(None);
        }
        Ok(Some(Self(path.to_path_buf())))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_up_mid_ingest_fails_it_at_once_and_the_station_serves_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "12m")? else {
        return Ok(());
    };
    let data = dir.path().join("home");
    let disk_arg = disk.0.to_string_lossy().to_string();
    let args = ["--home", "--content-manager", "--auth", "--disk", &disk_arg];
    let node = NodeProcess::start(&data, &args)?;
    let engine_disk = disk.0.join("engine-0");
    let first = dir.path().join("first.bin");
    let first_bytes = random_file(&first, 2 * MIB, 30)?;
    let first_id = ingest_ok(
        &ingest(&node, "first", &first)
            .segment_size(MIB)
            .publish_now(),
    )
    .await?;

    // The stalling program, one engine: segments 0 to 3 land, then the push waits on 4.
    let stalled = stalled_program().await?;
    let client = ingest(&node, "stalled", &stalled.url).command().spawn()?;
    wait_used(
        &node.addr,
        &[6 * MIB as u64],
        "the segments before the stall",
    )
    .await?;
    // Something else fills the disk meanwhile.
    let junk = disk.0.join("junk");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&junk)?;
        let block = vec![0xA5u8; 64 * 1024];
        while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
    }
    stalled.gate.open();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || client.wait_with_output()),
    )
    .await;
    let out = waited.context("the ingest did not return after its disk filled up")???;
    let error = outcome(&out)
        .err()
        .context("the ingest succeeded on a full disk")?;
    // Refused before its write: the engine asks the file system what it has free.
    assert!(
        error.starts_with("error: engine refused segment 4")
            && error.contains("store full")
            && error.contains("nothing was committed"),
        "{error}"
    );
    // The segments it stored are dropped again; the first program is all that is left.
    wait_used(
        &node.addr,
        &[2 * MIB as u64],
        "the failed ingest's segments dropped",
    )
    .await?;
    assert_eq!(segment_bytes(&engine_disk), 2 * MIB as u64);
    assert_eq!(
        programs(&node.addr, Some(&node.key()))?,
        vec![first_id.clone()]
    );

    // The station keeps serving what it holds.
    std::fs::remove_file(&junk)?;
    let console = dir.path().join("viewer").join("console");
    subscriber(&node.addr, &node.key(), &console, "viewer")?;
    let played = Play::new(&console, &node.addr, &first_id).run()?;
    assert!(
        played.bytes == first_bytes,
        "the program held before plays whole"
    );
    drop(node);
    drop(stalled);
    drop(disk);
    Ok(())
}

/// Fills the file system of `junk` to its last byte with that file.
fn fill_up(junk: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(junk)?;
    for size in [64 * 1024, 4096, 1] {
        let block = vec![0xA5u8; size];
        while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
    }
    Ok(())
}

/// The ingest into `node` of a 12 MiB program `title` (random bytes from `seed`, written
/// under `dir`) in segments of 4 MiB, whose index rows carry 8 KiB of tree leaves each: more
/// than the pages a commit can reuse. Also its bytes.
fn big_segments(
    dir: &Path,
    node: &NodeProcess,
    title: &str,
    seed: u64,
) -> Result<(Ingest, Vec<u8>)> {
    let source = dir.join(format!("{title}.bin"));
    let bytes = random_file(&source, 12 * MIB, seed)?;
    let ingest = ingest(node, title, &source)
        .segment_size(4 * MIB)
        .publish_now();
    Ok((ingest, bytes))
}

/// Ingests a first program into `node` and plays it through `console` (the normal path);
/// fills the tmpfs `full` up and ingests a second, which must fail, and plays the first
/// again, which must still work; frees the disk and ingests a
/// third, which must work, without a restart, and play byte for byte. The second's error.
async fn fail_one_ingest_then_take_the_next(
    dir: &Path,
    node: &NodeProcess,
    console: &Path,
    full: &Tmpfs,
    log: impl Fn() -> String,
) -> Result<String> {
    let (first, first_bytes) = big_segments(dir, node, "first", 50)?;
    let first_id = ingest_ok(&first).await?;
    assert!(Play::new(console, &node.addr, &first_id).run()?.bytes == first_bytes);

    let junk = full.0.join("junk");
    fill_up(&junk)?;
    let (second, _) = big_segments(dir, node, "second", 51)?;
    let out = ingest_output(&second, Duration::from_secs(120)).await?;
    let error = outcome(&out)
        .err()
        .context("the ingest succeeded with the disk of the station's databases full")?;
    assert!(error.starts_with("error: "), "{error}");
    eprintln!("the ingest on a full disk: {error}");
    // What the station held before still plays while the disk stays full: its databases'
    // reads go on after the failed write (reopened where redb's cache does not serve them).
    assert!(
        Play::new(console, &node.addr, &first_id).run()?.bytes == first_bytes,
        "the program held before plays whole with the disk full"
    );

    std::fs::remove_file(&junk)?;
    let (third, third_bytes) = big_segments(dir, node, "third", 52)?;
    let third_id = ingest_ok(&third)
        .await
        .with_context(|| format!("after `{error}`:\n{}", log()))?;
    let played = Play::new(console, &node.addr, &third_id).run()?;
    assert!(
        played.bytes == third_bytes,
        "the program ingested after plays whole"
    );
    let log = log();
    assert!(
        log.contains("database opened again after an I/O error"),
        "{log}"
    );
    // Nothing of the failed ingest is listed.
    let mut held = vec![first_id, third_id];
    held.sort();
    assert_eq!(programs(&node.addr, Some(&node.key()))?, held);
    Ok(error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_whose_data_directory_filled_up_takes_the_next_ingest_once_there_is_room()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    // The data directory (every database of the station) on a small tmpfs, the segments on
    // a disk with room: the databases are what meets the full disk.
    let data = dir.path().join("home");
    let Some(tmpfs) = Tmpfs::mount(&data, "8m")? else {
        return Ok(());
    };
    let disk = dir.path().join("disk").to_string_lossy().to_string();
    let args = ["--home", "--content-manager", "--auth", "--disk", &disk];
    let node = NodeProcess::start(&data, &args)?;
    let console = dir.path().join("viewer").join("console");
    subscriber(&node.addr, &node.key(), &console, "viewer")?;
    let error =
        fail_one_ingest_then_take_the_next(dir.path(), &node, &console, &tmpfs, || node.log())
            .await?;
    // The journal of ingests begun is the first commit of an ingest.
    assert!(
        error.contains("catalog") && error.contains("No space left on device"),
        "{error}"
    );
    drop(node);
    drop(tmpfs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_segment_index_filled_its_disk_takes_the_next_ingest_once_there_is_room()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    // An engine process whose data directory (its segment index, store.redb) is on a small
    // tmpfs, its segments on a disk with room; its director's databases have room too.
    let engine_data = dir.path().join("engine");
    let Some(tmpfs) = Tmpfs::mount(&engine_data, "4m")? else {
        return Ok(());
    };
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let node = Node::new(&dir.path().join("home"))
        .engines(0)
        .args(&["--engine-peer", &engine_peer])
        .home()
        .start()?;
    let issuer = node.issuer()?;
    let disk = dir.path().join("disk").to_string_lossy().to_string();
    let listen = ["--listen", "/ip4/127.0.0.1/tcp/0", "--trust", &issuer];
    let engine = EngineProcess::start_in(
        None,
        &engine_data,
        &node.addr,
        &[&listen[..], &["--disk", &disk]].concat(),
    )?;
    wait::blocking("the engine to attach", Duration::from_secs(20), || {
        Ok(status::engines_up(&node.addr)? == vec![(engine_peer.clone(), true)])
    })?;
    let console = dir.path().join("viewer").join("console");
    subscriber(&node.addr, &node.key(), &console, "viewer")?;
    let engine_log = || std::fs::read_to_string(engine_data.join("stderr.log")).unwrap_or_default();
    let error =
        fail_one_ingest_then_take_the_next(dir.path(), &node, &console, &tmpfs, engine_log).await?;
    assert!(error.contains("segment index"), "{error}");
    drop(engine);
    drop(node);
    drop(tmpfs);
    Ok(())
}

/// A station in a process of its own under `root/name`, enrolled with the auth station
/// `auth` and joined through it, started with `extra` flags; returns once its engine holds
/// its engine token.
fn enrolled(root: &Path, name: &str, auth: &NodeProcess, extra: &[&str]) -> Result<NodeProcess> {
    let node = Node::new(&root.join(name))
        .ttl(6)
        .args(extra)
        .enrolled_with(auth)?
        .start()?;
    node.wait_engine_token(0)?;
    Ok(node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_full_station_evicts_or_the_console_goes_to_the_holder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let home = NodeProcess::start(
        &root.join("home"),
        &["--home", "--content-manager", "--auth", "--record-ttl", "6"],
    )?;
    // b caches up to 6 MiB; c is the home of a 2 MiB program of its own, which fills it.
    let b = enrolled(root, "b", &home, &["--capacity", "6291456"])?;
    let c = enrolled(
        root,
        "c",
        &home,
        &["--home", "--content-manager", "--capacity", "2097152"],
    )?;
    let mut programs = Vec::new();
    for (i, node) in [&home, &home, &c].into_iter().enumerate() {
        let path = root.join(format!("p{i}.bin"));
        let bytes = random_file(&path, if i < 2 { 4 * MIB } else { 2 * MIB }, 40 + i as u64)?;
        let program = ingest(node, &format!("p{i}"), &path)
            .segment_size(2 * MIB)
            .publish_now();
        programs.push((ingest_ok(&program).await?, bytes));
    }
    assert_eq!(used_bytes(&c.addr)?, vec![2 * MIB as u64], "c is full");
    let console = root.join("viewer").join("console");
    subscriber(&home.addr, &home.key(), &console, "viewer")?;
    let home_peer = home.peer();
    for node in [&b, &c] {
        wait::until("the home station listed", Duration::from_secs(30), || {
            let listed = status::directors(&node.addr).is_ok_and(|d| d.contains(&home_peer));
            async move { Ok(listed) }
        })
        .await?;
    }

    // b copies p0 as it plays (4 of its 6 MiB), then p1: 2 MiB fit, the other 2 MiB push out
    // the least recently used segment of p0, which the home holds.
    for (id, bytes) in &programs[..2] {
        let played = Play::new(&console, &b.addr, id).run()?;
        assert!(played.bytes == *bytes, "{id} plays whole through b");
    }
    let used = used_bytes(&b.addr)?;
    assert_eq!(used, vec![6 * MIB as u64], "b is full, not over");
    let b_status = status::station(&b.addr)?;
    let misses = b_status["activity"]["misses"].as_u64();
    assert!(
        misses >= Some(4),
        "every segment was copied to b: {b_status}"
    );
    assert_eq!(b_status["activity"]["copies_declined"], 0);

    // c has no room and nothing evictable: it copies nothing and sends the console to a
    // holder's engine (the home's, or b's for the segment b kept), which serves it.
    let holders = [home.engine()?, b.engine()?];
    let c_engine = c.engine()?;
    let played = Play::new(&console, &c.addr, &programs[0].0).run()?;
    assert!(played.bytes == programs[0].1, "p0 plays whole through c");
    let served: Vec<String> = played.stats["engines"]
        .as_array()
        .context("no engines in the stats")?
        .iter()
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    assert!(
        !served.is_empty() && served.iter().all(|e| holders.contains(e) && *e != c_engine),
        "served by {served:?}, holders {holders:?}"
    );
    assert_eq!(used_bytes(&c.addr)?, vec![2 * MIB as u64]);
    let c_status = status::station(&c.addr)?;
    assert!(
        c_status["activity"]["copies_declined"].as_u64() >= Some(2),
        "{c_status}"
    );

    // A replica that does not fit in b (8 MiB against 6 MiB free or evictable) is not asked
    // of it (its record shows its room; it would refuse at once) and no other station has
    // room (c is a home): the content manager counts it unplaced, b keeps what it holds.
    let big = root.join("big.bin");
    random_file(&big, 8 * MIB, 50)?;
    ingest_ok(&ingest(&home, "big", &big).segment_size(2 * MIB).replicas(1)).await?;
    wait::until(
        "the replica counted unplaced",
        Duration::from_secs(60),
        || {
            let unplaced = status::station(&home.addr)
                .is_ok_and(|s| s["activity"]["replicas_unplaced"].as_u64() == Some(1));
            async move { Ok(unplaced) }
        },
    )
    .await?;
    assert_eq!(used_bytes(&b.addr)?, vec![6 * MIB as u64]);
    assert_eq!(status::station(&b.addr)?["activity"]["copies_declined"], 0);

    // What the stores hold: b all of p1 and one segment of p0, c nothing of p0.
    assert!(b.terminate()?);
    assert!(c.terminate()?);
    let (b_p1, _) = engine_segments(&root.join("b"), 1, programs[1].0.parse()?).await?;
    let (b_p0, _) = engine_segments(&root.join("b"), 1, programs[0].0.parse()?).await?;
    assert_eq!(
        (b_p1.len(), b_p0.len()),
        (2, 1),
        "b evicted one segment of p0"
    );
    let (c_p0, _) = engine_segments(&root.join("c"), 1, programs[0].0.parse()?).await?;
    assert!(c_p0.is_empty());
    Ok(())
}
