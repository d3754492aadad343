//! Store scenarios against real redb files and real segment files in temp dirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use tokio::sync::mpsc;
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId, SegmentIndex};

use super::index::{Index, Op, Record};
use super::locations::{Location, LocationState, LocationTable};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn seg(program: u8, index: u32) -> SegmentId {
    SegmentId::new(ProgramId([program; 32]), index)
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(u64::from(seed)) as u8
                ^ seed
        })
        .collect()
}

fn config(dir: &Path, disks: usize, capacity: u64) -> Config {
    let disks = (0..disks).map(|i| dir.join(format!("disk{i}"))).collect();
    Config::new(dir.join("index.redb"), disks, capacity)
}

async fn put(store: &SegmentStore, id: SegmentId, data: &[u8]) -> Result<(), Error> {
    let mut w = store
        .begin_write(id, SegmentHash::of(data), data.len() as u64)
        .await?;
    for c in data.chunks(100_000) {
        w.write_chunk(Bytes::copy_from_slice(c)).await?;
    }
    w.finish().await
}

/// One of a disk's two threads.
#[derive(Clone, Copy)]
enum Thread {
    /// Its reads, writes and removals.
    Worker,
    /// Its seals (fsyncs).
    Sync,
}

/// Holds `thread` of `disk` in a job that returns only once the sender is used or dropped, as
/// a read or an fsync on a stuck device would; returns once the job is queued or running.
async fn hold(
    store: &SegmentStore,
    disk: usize,
    thread: Thread,
) -> (
    std::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let job = move || {
        let _ = blocked.recv();
    };
    let sync = matches!(thread, Thread::Sync);
    let held = {
        let store = store.clone();
        tokio::spawn(async move { Ok(store.disk_thread(disk, sync).run(job).await?) })
    };
    while store.disk_thread(disk, sync).load() == 0 {
        tokio::task::yield_now().await;
    }
    (release, held)
}

async fn settle(store: &SegmentStore) {
    store.settle().await;
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_disk_proceeds_while_the_other_disk_streams_or_is_stuck() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 2, 1 << 30)).await?;
    let streamed = seg(1, 0);
    let data = bytes(1, 4 << 20);
    put(&store, streamed, &data).await?;
    let read_disk = store.info(&streamed).map(|i| i.disk);
    assert_eq!(read_disk, Some(0));

    // A reader streams disk 0 in a loop while a writer fills disk 1.
    let stop = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, stop, read_bytes) = (store.clone(), stop.clone(), read_bytes.clone());
        tokio::spawn(async move {
            // One reader kept open, rewound each pass: like a viewer's stream, it counts as
            // load on disk 0 for the whole run.
            let mut r = store.open_read(streamed).await?;
            while !stop.load(Ordering::Relaxed) {
                r.seek(0);
                while let Some(b) = r.read_next(256 * 1024).await? {
                    read_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
            Ok::<_, Error>(())
        })
    };
    // Let the reader get going so its load steers the writer to the other disk.
    while read_bytes.load(Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    let read_before = read_bytes.load(Ordering::Relaxed);
    let written_total = 8u64 << 20;
    for i in 0..8 {
        let d = bytes(i as u8 + 10, 1 << 20);
        let id = seg(2, i);
        let mut w = store
            .begin_write(id, SegmentHash::of(&d), d.len() as u64)
            .await?;
        assert_ne!(
            Some(w.disk()),
            read_disk,
            "a new segment goes to the disk without the open stream"
        );
        for c in d.chunks(64 * 1024) {
            w.write_chunk(Bytes::copy_from_slice(c)).await?;
        }
        w.finish().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let read_during = read_bytes.load(Ordering::Relaxed) - read_before;
    stop.store(true, Ordering::Relaxed);
    reader.await??;
    eprintln!(
        "concurrent: write disk1 {:.0} MB/s, stream disk0 {:.0} MB/s over {:.3} s",
        written_total as f64 / 1e6 / secs,
        read_during as f64 / 1e6 / secs,
        secs
    );
    assert!(
        read_during > 0,
        "the stream made progress during the writes"
    );

    // Harder: disk 0's worker is stuck in a read that does not return until released. A full
    // write (temp, hash, fsync, rename, commit) to disk 1 must still complete.
    let (release, stuck) = hold(&store, 0, Thread::Worker).await;
    let d = bytes(99, 1 << 20);
    let id = seg(3, 0);
    let write = async {
        let mut w = store
            .begin_write(id, SegmentHash::of(&d), d.len() as u64)
            .await?;
        assert_eq!(w.disk(), 1);
        w.write_chunk(Bytes::copy_from_slice(&d)).await?;
        w.finish().await
    };
    tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .map_err(|_| "write on disk 1 waited behind stuck disk 0")??;
    assert_eq!(store.filled(&id), Some((1 << 20, 1 << 20, true)));
    release.send(())?;
    stuck.await??;
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_segment_being_made_durable_holds_up_no_other_read_or_write_on_its_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let kept = bytes(20, 300_000);
    put(&store, seg(20, 0), &kept).await?;
    // The disk's sync thread is held, as an fsync on a slow device holds it.
    let (release, stuck) = hold(&store, 0, Thread::Sync).await;
    // A segment written whole waits for the sync thread to be made durable...
    let first = bytes(21, 200_000);
    let mut w = store
        .begin_write(seg(21, 0), SegmentHash::of(&first), first.len() as u64)
        .await?;
    w.write_chunk(Bytes::copy_from_slice(&first)).await?;
    let sealing = tokio::spawn(async move { w.finish().await });
    // ...while the next segment's writes and a stored segment's reads on the same disk go on.
    let second = bytes(22, 200_000);
    let beside = async {
        let mut w = store
            .begin_write(seg(22, 0), SegmentHash::of(&second), second.len() as u64)
            .await?;
        for c in second.chunks(64 * 1024) {
            w.write_chunk(Bytes::copy_from_slice(c)).await?;
        }
        let mut r = store.open_read(seg(20, 0)).await?;
        let read = r.read_range(0, kept.len() as u64).await?;
        Ok::<_, Error>((w, read))
    };
    let (w, read) = tokio::time::timeout(Duration::from_secs(20), beside)
        .await
        .map_err(|_| "a write or read waited behind another segment's fsync")??;
    assert_eq!(read, kept);
    assert_eq!(store.filled(&seg(22, 0)), Some((200_000, 200_000, false)));
    // The control: the first segment is not complete while its seal cannot run.
    assert!(!sealing.is_finished(), "sealed without its sync thread");
    assert_eq!(store.filled(&seg(21, 0)), Some((200_000, 200_000, false)));
    release.send(())?;
    stuck.await??;
    sealing.await??;
    w.finish().await?;
    for (id, data) in [(seg(21, 0), &first), (seg(22, 0), &second)] {
        let mut r = store.open_read(id).await?;
        assert_eq!(&r.read_range(0, data.len() as u64).await?, data);
    }
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_follower_sees_exactly_the_bytes_written_so_far_then_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let id = seg(4, 1);
    let data = bytes(4, 3 * CHUNK as usize + 1234);
    let total = data.len() as u64;
    let mut w = store.begin_write(id, SegmentHash::of(&data), total).await?;
    assert_eq!(store.filled(&id), Some((0, total, false)));

    let mut r = store.open_read(id).await?;
    w.write_chunk(Bytes::copy_from_slice(&data[..100_000]))
        .await?;
    assert_eq!(store.filled(&id), Some((100_000, total, false)));
    assert_eq!(r.filled(), (100_000, false));
    let first = r.read_next(usize::MAX).await?.ok_or("end too early")?;
    assert_eq!(first, &data[..100_000], "exactly the bytes written so far");

    // Nothing more is written yet: the follower waits rather than returning short or stale.
    let early = tokio::time::timeout(Duration::from_millis(50), r.read_next(usize::MAX)).await;
    assert!(early.is_err(), "a follower must wait for unwritten bytes");

    // A range past the fill waits for it, and gets it once written.
    let mut r2 = store.open_read(id).await?;
    let range = tokio::spawn(async move { r2.read_range(150_000, 10).await });
    w.write_chunk(Bytes::copy_from_slice(&data[100_000..160_000]))
        .await?;
    assert_eq!(range.await??, &data[150_000..150_010]);

    w.write_chunk(Bytes::copy_from_slice(&data[160_000..]))
        .await?;
    w.finish().await?;
    assert_eq!(store.filled(&id), Some((total, total, true)));

    let mut rest = Vec::new();
    while let Some(b) = r.read_next(usize::MAX).await? {
        rest.extend(b);
    }
    assert_eq!(rest, &data[100_000..]);
    // After completion the same reader's range reads are verified chunk reads.
    assert_eq!(
        r.read_range(CHUNK - 3, 10).await?,
        &data[CHUNK as usize - 3..CHUNK as usize + 7]
    );
    drop(r);
    assert_eq!(store.read_range(id, 0, total).await?, data);
    store.shutdown().await?;
    Ok(())
}

/// A write told its tree first (a verified copy) checks each 16 KiB group as it lands: a
/// wrong group costs that group, not the write (the groups before it count, the write goes on
/// from there with the right bytes), and a follower of the filling segment has the tree at
/// once. Leaves that do not lead to the segment's hash are refused and change nothing; a write
/// that computed its own leaves over bytes already written keeps doing so.
#[tokio::test]
async fn a_write_told_its_tree_keeps_the_groups_before_a_wrong_one() -> TestResult {
    use vodmesh_proto::verified::{GROUP, Leaves};
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let group = GROUP as usize;
    let data = bytes(9, 5 * group + 1000);
    let (id, hash, len) = (seg(9, 0), SegmentHash::of(&data), data.len() as u64);
    let mut w = store.begin_write(id, hash, len).await?;
    let follower = store.open_read(id).await?;
    assert!(follower.tree().is_none(), "no tree before it is told");
    // A stream that comes before the tree waits for it (an hour at most here: it is told).
    let waiting = store.open_read(id).await?;
    let hour = Duration::from_secs(3600);
    let told = tokio::spawn(async move { waiting.tree_within(hour).await });

    // Leaves of other bytes: refused, nothing changes.
    let other = Leaves::of(&bytes(10, data.len()));
    assert!(matches!(w.know(other), Err(Error::WrongTree { .. })));
    assert!(follower.tree().is_none());
    assert!(matches!(
        w.know(Leaves::of(&data[..group])),
        Err(Error::WrongTree { .. })
    ));
    // The right ones: the follower sees the tree, whose root is the segment's hash.
    assert!(w.know(Leaves::of(&data))?);
    let tree = follower.tree().ok_or("the follower has no tree")?;
    assert_eq!(tree.1.root(), hash);
    let waited = tokio::time::timeout(Duration::from_secs(60), told).await??;
    assert_eq!(waited.map(|t| t.1.root()), Some(hash));

    // Groups 0..3 with a byte of group 2 wrong: groups 0 and 1 are kept.
    let mut wrong = data[..3 * group].to_vec();
    wrong[2 * group + 7] ^= 1;
    assert!(matches!(
        w.write_chunk(wrong.into()).await,
        Err(Error::GroupMismatch { offset, .. }) if offset == 2 * GROUP
    ));
    assert_eq!(w.written(), 2 * GROUP);
    assert_eq!(store.filled(&id).map(|f| f.0), Some(2 * GROUP));
    // The write goes on from there with the right bytes, to the end (the last group short).
    w.write_chunk(Bytes::copy_from_slice(&data[2 * group..4 * group]))
        .await?;
    w.write_chunk(Bytes::copy_from_slice(&data[4 * group..]))
        .await?;
    w.finish().await?;
    assert_eq!(store.read_range(id, 0, len).await?, data);
    drop(follower);

    // A write whose own leaves cover bytes already written keeps computing them.
    let id2 = seg(9, 1);
    let mut w = store.begin_write(id2, hash, len).await?;
    w.write_chunk(Bytes::copy_from_slice(&data[..group]))
        .await?;
    assert!(!w.know(Leaves::of(&data))?);
    let follower = store.open_read(id2).await?;
    assert!(follower.tree().is_none());
    // Bytes came without a tree: a stream waits for none (not the hour), and goes raw.
    let tree = tokio::time::timeout(Duration::from_secs(60), follower.tree_within(hour)).await?;
    assert!(tree.is_none());
    drop(follower);
    w.write_chunk(Bytes::copy_from_slice(&data[group..]))
        .await?;
    w.finish().await?;
    assert_eq!(store.read_range(id2, 0, len).await?, data);

    // Control: without its tree, the same wrong byte is found only at the end, and costs the
    // whole write.
    let id3 = seg(9, 2);
    let mut w = store.begin_write(id3, hash, len).await?;
    let mut wrong = data.clone();
    wrong[2 * group + 7] ^= 1;
    w.write_chunk(wrong.into()).await?;
    assert_eq!(w.written(), len);
    assert!(matches!(w.finish().await, Err(Error::HashMismatch { .. })));
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_hash_a_long_write_or_a_dropped_writer_leaves_nothing_visible() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let data = bytes(5, 200_000);
    let len = data.len() as u64;

    // Wrong hash: found only at the end, after a follower already read some bytes.
    let id = seg(5, 0);
    let mut w = store
        .begin_write(id, SegmentHash::of(b"other"), len)
        .await?;
    let mut follower = store.open_read(id).await?;
    w.write_chunk(Bytes::copy_from_slice(&data)).await?;
    assert!(matches!(w.finish().await, Err(Error::HashMismatch { .. })));
    assert!(matches!(
        follower.read_range(0, 10).await,
        Err(Error::Aborted(_))
    ));
    drop(follower);

    // Too long: refused on the chunk that overruns.
    let id2 = seg(5, 1);
    let mut w = store
        .begin_write(id2, SegmentHash::of(&data), len - 1)
        .await?;
    assert!(matches!(
        w.write_chunk(Bytes::copy_from_slice(&data)).await,
        Err(Error::TooLong { .. })
    ));
    assert!(matches!(w.finish().await, Err(Error::Aborted(_))));

    // Dropped without finish.
    let id3 = seg(5, 2);
    let mut w = store.begin_write(id3, SegmentHash::of(&data), len).await?;
    w.write_chunk(Bytes::copy_from_slice(&data[..1000])).await?;
    drop(w);

    settle(&store).await;
    for id in [id, id2, id3] {
        assert_eq!(store.filled(&id), None);
        assert!(matches!(store.open_read(id).await, Err(Error::NotFound(_))));
    }
    assert!(
        files_under(&dir.path().join("disk0")).is_empty(),
        "no temp or segment file left"
    );
    assert_eq!(store.stats().disks[0].reserved, 0);
    assert_eq!(store.stats().disks[0].used, 0);

    store.shutdown().await?;
    drop(store);
    let (store, _events, report) = SegmentStore::open_reconciled(cfg).await?;
    assert!(store.list().is_empty());
    assert_eq!(
        report,
        Reconciled::default(),
        "nothing left to reconcile either"
    );
    // The segment can be written properly afterwards.
    put(&store, id, &data).await?;
    assert_eq!(store.read_range(id, 0, len).await?, data);
    store.shutdown().await?;
    Ok(())
}

/// Flips byte `at` of segment `id`'s file (as a rotting disk would): its path and the bytes
/// on the disk now.
fn flip_on_disk(
    store: &SegmentStore,
    id: SegmentId,
    at: usize,
) -> Result<(PathBuf, Vec<u8>), Box<dyn std::error::Error>> {
    let path = store.path_of(&id).ok_or("no path")?;
    let mut on_disk = std::fs::read(&path)?;
    on_disk[at] ^= 0x01;
    std::fs::write(&path, &on_disk)?;
    Ok((path, on_disk))
}

#[tokio::test]
async fn a_flipped_byte_is_detected_never_served_and_the_segment_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1, 1 << 30);
    let (store, mut events) = SegmentStore::open(cfg.clone()).await?;
    let id = seg(6, 0);
    let data = bytes(6, 3 * CHUNK as usize);
    put(&store, id, &data).await?;

    let (path, _) = flip_on_disk(&store, id, CHUNK as usize + 7)?;

    let mut r = store.open_read(id).await?;
    // A range that does not touch the damaged chunk verifies and is served.
    assert_eq!(r.read_range(0, 100).await?, &data[..100]);
    // One that does is refused, with the chunk named.
    match r.read_range(CHUNK, 100).await {
        Err(Error::Corrupt { segment, chunk }) => assert_eq!((segment, chunk), (id, 1)),
        other => return Err(format!("expected Corrupt, got {other:?}").into()),
    }
    assert_eq!(
        events.try_recv()?,
        Event::Dropped {
            segment: id,
            reason: DropReason::Corrupt { chunk: 1 }
        }
    );
    // Dropped: not served again, not even the good chunk through the old reader.
    assert!(r.read_range(0, 100).await.is_err());
    assert_eq!(store.filled(&id), None);
    assert!(matches!(store.open_read(id).await, Err(Error::NotFound(_))));
    settle(&store).await;
    assert!(!path.exists(), "the bad file is removed");
    drop(r);

    store.shutdown().await?;
    drop(store);
    let (store, _events) = SegmentStore::open(cfg).await?;
    assert!(store.list().is_empty(), "the drop is in the index too");
    store.shutdown().await?;
    Ok(())
}

/// A copy's source reads unchecked (its receiver hashes every byte against the segment's
/// hash): what is on the disk is sent as it is and the segment stays; the checked read of the
/// same bytes (control) refuses them and drops it.
#[tokio::test]
async fn an_unchecked_read_sends_the_disk_as_it_is_and_a_checked_one_drops_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, mut events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let id = seg(9, 0);
    let data = bytes(9, 3 * CHUNK as usize);
    put(&store, id, &data).await?;
    let (_, on_disk) = flip_on_disk(&store, id, CHUNK as usize + 7)?;

    let mut r = store.open_read(id).await?;
    let mut sent = Vec::new();
    // Each read into the buffer of the one before (the last one shorter): only bytes read.
    let mut spare = Vec::new();
    while let Some(bytes) = r.read_next_unchecked(spare, CHUNK as usize + 5).await? {
        sent.extend_from_slice(&bytes);
        spare = bytes;
    }
    assert!(sent == on_disk, "an unchecked read sends the disk's bytes");
    assert!(events.try_recv().is_err(), "nothing dropped");
    assert!(store.filled(&id).is_some());

    let mut r = store.open_read(id).await?;
    assert!(matches!(
        r.read_next(3 * CHUNK as usize).await,
        Err(Error::Corrupt { chunk: 1, .. })
    ));
    assert!(matches!(events.try_recv()?, Event::Dropped { .. }));
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn scrub_drops_the_damaged_segments_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, mut events) = SegmentStore::open(config(dir.path(), 2, 1 << 30)).await?;
    let good = seg(7, 0);
    let bad = seg(7, 1);
    put(&store, good, &bytes(7, 300_000)).await?;
    put(&store, bad, &bytes(8, 300_000)).await?;
    let path = store.path_of(&bad).ok_or("no path")?;
    let mut b = std::fs::read(&path)?;
    b[299_999] ^= 0x80;
    std::fs::write(&path, &b)?;

    assert_eq!(store.scrub().await?, vec![bad]);
    assert_eq!(
        events.try_recv()?,
        Event::Dropped {
            segment: bad,
            reason: DropReason::Scrub
        }
    );
    assert_eq!(store.list(), vec![good]);
    assert_eq!(store.read_range(good, 0, 300_000).await?, bytes(7, 300_000));
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn eviction_is_lru_among_segments_held_elsewhere_sparing_pinned_and_open_ones() -> TestResult
{
    const S: u64 = 100_000;
    let dir = tempfile::tempdir()?;
    let (store, mut events) = SegmentStore::open(config(dir.path(), 1, 5 * S)).await?;
    let ids: Vec<SegmentId> = (1..=9).map(|i| seg(9, i)).collect();
    let (s1, s2, s3, s4, s5) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    for (i, id) in ids[..5].iter().enumerate() {
        put(&store, *id, &bytes(i as u8, S as usize)).await?;
    }
    for id in [s1, s2, s3, s4] {
        store.set_held_elsewhere(id, true).await?;
    }
    store.set_pinned(s1, true).await?;
    // s2 stays open; s4 is used before s3, so s4 is the least recently used candidate.
    let open = store.open_read(s2).await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    store.read_range(s4, 0, 10).await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    store.read_range(s3, 0, 10).await?;

    put(&store, ids[5], &bytes(6, S as usize)).await?;
    assert_eq!(events.try_recv()?, Event::Evicted { segment: s4 });
    put(&store, ids[6], &bytes(7, S as usize)).await?;
    assert_eq!(events.try_recv()?, Event::Evicted { segment: s3 });

    // Left: s1 pinned, s2 open, s5 held nowhere else, and the two new ones (not held
    // elsewhere either): nothing may go.
    match put(&store, ids[7], &bytes(8, S as usize)).await {
        Err(Error::Full { need, .. }) => assert_eq!(need, S),
        other => return Err(format!("expected Full, got {other:?}").into()),
    }
    assert_eq!(store.filled(&ids[7]), None);
    for id in [s1, s2, s5, ids[5], ids[6]] {
        assert!(store.filled(&id).is_some_and(|f| f.2), "{id:?} kept");
    }

    // Closing the reader makes s2 evictable.
    drop(open);
    put(&store, ids[7], &bytes(8, S as usize)).await?;
    assert_eq!(events.try_recv()?, Event::Evicted { segment: s2 });
    settle(&store).await;
    let files = files_under(&dir.path().join("disk0"));
    assert_eq!(files.len(), 5, "evicted files are gone: {files:?}");
    assert!(store.stats().disks[0].used <= 5 * S);
    let (running, recounted) = store.audit();
    assert_eq!(running, recounted);
    assert_eq!(
        running[0].2, 0,
        "s3, s4 and s2 were the evictable ones, and are gone"
    );
    store.shutdown().await?;
    Ok(())
}

/// Bytes of the segment files under `disk`'s `segments/` directory.
fn bytes_on_disk(disk: &Path) -> u64 {
    files_under(&disk.join("segments"))
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_bytes_after_any_start_are_the_bytes_on_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 2, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    for i in 0..6u32 {
        let data = bytes(i as u8, 100_000 + i as usize * 7_777);
        put(&store, seg(12, i), &data).await?;
    }
    store.set_held_elsewhere(seg(12, 1), true).await?;
    store.remove(seg(12, 2)).await?;
    // A write in progress reserves its bytes but uses none.
    let pending = store
        .begin_write(seg(12, 9), SegmentHash::of(b"x"), 50_000)
        .await?;
    settle(&store).await;
    let on_disk = |d: usize| bytes_on_disk(&dir.path().join(format!("disk{d}")));
    let figures = |store: &SegmentStore| -> Vec<(u64, u64)> {
        let stats = store.stats();
        stats.disks.iter().map(|d| (d.used, d.reserved)).collect()
    };
    let before = figures(&store);
    assert_eq!(before.iter().map(|f| f.1).sum::<u64>(), 50_000);
    assert_eq!(before[0].0, on_disk(0));
    assert_eq!(before[1].0, on_disk(1));
    let (running, recounted) = store.audit();
    assert_eq!(running, recounted);

    // A clean stop: the same used bytes, nothing reserved.
    drop(pending);
    store.shutdown().await?;
    drop(store);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let after = figures(&store);
    assert_eq!(after, vec![(before[0].0, 0), (before[1].0, 0)]);
    assert_eq!(
        store.stats().disks.iter().map(|d| d.evictable).sum::<u64>(),
        107_777
    );

    // No shutdown, a write given up midway and its temp file left behind: the same again.
    let mut w = store
        .begin_write(seg(12, 10), SegmentHash::of(b"y"), 70_000)
        .await?;
    w.write_chunk(Bytes::copy_from_slice(&[7u8; 30_000]))
        .await?;
    std::fs::write(dir.path().join("disk1/tmp/crashed.0.1"), [1u8; 4096])?;
    drop(w);
    settle(&store).await;
    drop(store);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    assert_eq!(figures(&store), vec![(on_disk(0), 0), (on_disk(1), 0)]);
    assert_eq!(figures(&store), after);

    // A scrub that drops a damaged segment: used shrinks by exactly its size.
    let victim = store.path_of(&seg(12, 3)).ok_or("no path")?;
    let victim_disk = store.info(&seg(12, 3)).map(|i| i.disk).ok_or("no info")?;
    let mut damaged = std::fs::read(&victim)?;
    damaged[10] ^= 0xff;
    std::fs::write(&victim, damaged)?;
    assert_eq!(store.scrub().await?, vec![seg(12, 3)]);
    settle(&store).await;
    let scrubbed = figures(&store);
    assert_eq!(
        scrubbed[victim_disk].0,
        after[victim_disk].0 - (100_000 + 3 * 7_777)
    );
    assert_eq!(scrubbed, vec![(on_disk(0), 0), (on_disk(1), 0)]);
    let (running, recounted) = store.audit();
    assert_eq!(running, recounted);
    store.shutdown().await?;
    Ok(())
}

/// A disk that did not mount (its empty mount point in its place) holds none of the segments
/// the index names on it: the store refuses to open and changes nothing, where it dropped
/// them from the index, and with the disk back deleted their files as unknown. Control: with
/// the disk back, every segment is there.
#[tokio::test]
async fn a_disk_holding_none_of_its_segments_is_refused_and_nothing_is_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 2, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let ids = [seg(11, 0), seg(11, 1), seg(11, 2), seg(11, 3)];
    for (i, id) in ids.iter().enumerate() {
        put(&store, *id, &bytes(i as u8, 50_000)).await?;
    }
    store.shutdown().await?;
    drop(store);
    assert!(!files_under(&dir.path().join("disk1/segments")).is_empty());

    // disk1 "unmounted": its directory elsewhere, an empty one in its place.
    let away = dir.path().join("disk1.away");
    std::fs::rename(dir.path().join("disk1"), &away)?;
    let refused = SegmentStore::open_reconciled(cfg.clone()).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("is it mounted?"), "{why}");
    assert!(why.contains("disk1"), "{why}");
    // Left out of --disk altogether: refused too.
    let one = Config::new(cfg.index.clone(), vec![dir.path().join("disk0")], 1 << 30);
    let refused = SegmentStore::open_reconciled(one).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("not given now"), "{why}");

    std::fs::remove_dir_all(dir.path().join("disk1"))?;
    std::fs::rename(&away, dir.path().join("disk1"))?;
    let (store, _events, report) = SegmentStore::open_reconciled(cfg).await?;
    assert_eq!(
        report,
        Reconciled {
            kept: 4,
            ..Reconciled::default()
        }
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.read_range(*id, 0, 50_000).await?,
            bytes(i as u8, 50_000)
        );
    }
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn reopen_after_a_crash_reconciles_files_and_index() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 2, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let ids = [seg(10, 0), seg(10, 1), seg(10, 2)];
    for (i, id) in ids.iter().enumerate() {
        put(&store, *id, &bytes(i as u8, 150_000)).await?;
    }
    let lost_file = store.path_of(&ids[0]).ok_or("no path")?;
    store.shutdown().await?;
    drop(store);

    // The crash: an interrupted write's temp file and filling row, an index row whose file
    // is gone, and a segment file the index never heard of.
    std::fs::write(dir.path().join("disk0/tmp/leftover.0.1"), b"half a segment")?;
    std::fs::remove_file(&lost_file)?;
    let stray = dir
        .path()
        .join("disk1/segments")
        .join(ProgramId([10; 32]).to_string())
        .join("99");
    std::fs::create_dir_all(stray.parent().ok_or("no parent")?)?;
    std::fs::write(&stray, b"renamed but never committed")?;
    {
        let index = Index::open(&cfg.index)?;
        let record = Record {
            disk: 1,
            size: 5000,
            hash: SegmentHash::of(b"x"),
            state: SegmentState::Filling,
            last_use_ms: 0,
            pinned: false,
            held_elsewhere: false,
        };
        index.apply(
            &[Op::Put {
                segment: seg(10, 50),
                record,
                chunks: None,
            }],
            true,
        )?;
    }

    let (store, _events, report) = SegmentStore::open_reconciled(cfg.clone()).await?;
    assert_eq!(
        report,
        Reconciled {
            kept: 2,
            interrupted: 2,
            missing_files: 1,
            orphan_files: 1
        }
    );
    let mut listed = store.list();
    listed.sort();
    assert_eq!(listed, vec![ids[1], ids[2]]);
    assert_eq!(
        store.read_range(ids[1], 0, 150_000).await?,
        bytes(1, 150_000)
    );
    assert_eq!(
        store.read_range(ids[2], 0, 150_000).await?,
        bytes(2, 150_000)
    );
    assert!(!stray.exists());
    assert!(files_under(&dir.path().join("disk0/tmp")).is_empty());
    assert!(store.filled(&seg(10, 50)).is_none());
    store.shutdown().await?;
    drop(store);

    // A second start finds nothing left to fix.
    let (store, _events, report) = SegmentStore::open_reconciled(cfg).await?;
    assert_eq!(
        report,
        Reconciled {
            kept: 2,
            ..Reconciled::default()
        }
    );
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn flags_and_last_use_survive_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let id = seg(11, 0);
    put(&store, id, &bytes(11, 1000)).await?;
    store.set_pinned(id, true).await?;
    store.set_held_elsewhere(id, true).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.read_range(id, 0, 1).await?;
    let used = store.info(&id).ok_or("missing")?.last_use_ms;
    store.shutdown().await?;
    drop(store);

    let (store, _events) = SegmentStore::open(cfg).await?;
    let info = store.info(&id).ok_or("missing after reopen")?;
    assert!(info.pinned && info.held_elsewhere);
    assert_eq!(info.last_use_ms, used);
    assert_eq!(info.state, SegmentState::Complete);
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_program_is_pinned_in_one_durable_commit_and_stays_pinned_after_a_restart() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 2, 1 << 30);
    let (store, _events) = SegmentStore::open(cfg.clone()).await?;
    let program: Vec<SegmentId> = (0..32).map(|i| seg(12, i)).collect();
    for (i, id) in program.iter().enumerate() {
        put(&store, *id, &bytes(i as u8, 1000)).await?;
    }
    let others = [seg(13, 0), seg(13, 1)];
    for id in others {
        put(&store, id, &bytes(99, 1000)).await?;
    }
    // A home tells every engine of the station the whole program: most are held elsewhere.
    let mut told = program.clone();
    told.push(seg(12, 32));
    let durable = || store.commits().1;
    let before = durable();
    assert_eq!(store.set_pinned_all(&told, true).await?, program.len());
    assert_eq!(durable() - before, 1, "one commit for the program");
    // Control: pinned one at a time, each is a commit of its own.
    store.set_pinned(others[0], true).await?;
    store.set_pinned(others[1], true).await?;
    assert_eq!(durable() - before, 3);
    store.set_pinned(others[1], false).await?;
    assert!(matches!(
        store.set_pinned(seg(12, 32), true).await,
        Err(Error::NotFound(_))
    ));
    store.shutdown().await?;
    drop(store);

    let (store, _events) = SegmentStore::open(cfg).await?;
    for id in program.iter().chain(&others[..1]) {
        assert!(store.info(id).ok_or("missing after reopen")?.pinned, "{id}");
    }
    assert!(!store.info(&others[1]).ok_or("missing")?.pinned);
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_program_is_removed_in_one_commit_but_for_the_segments_being_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, mut events) = SegmentStore::open(config(dir.path(), 2, 1 << 30)).await?;
    let program: Vec<SegmentId> = (0..32).map(|i| seg(14, i)).collect();
    for (i, id) in program.iter().enumerate() {
        put(&store, *id, &bytes(i as u8, 1000)).await?;
    }
    let (kept, read) = (seg(15, 0), program[7]);
    put(&store, kept, &bytes(99, 1000)).await?;
    let open = store.open_read(read).await?;
    let mut told = program.clone();
    told.push(seg(14, 32));
    let before = store.commits().0;
    let (removed, busy) = store.remove_all(&told).await;
    assert_eq!(store.commits().0 - before, 1, "one commit for the program");
    assert_eq!(busy, vec![read]);
    let gone: Vec<SegmentId> = program.iter().copied().filter(|s| *s != read).collect();
    assert_eq!(removed, gone);
    assert_eq!(store.list().len(), 2);
    assert_eq!(store.read_range(kept, 0, 1000).await?, bytes(99, 1000));
    // Control: the one being read goes once its reader lets go, in a commit of its own.
    drop(open);
    store.remove(read).await?;
    assert_eq!(store.commits().0 - before, 2);
    assert_eq!(store.list(), vec![kept]);
    assert!(matches!(store.remove(read).await, Err(Error::NotFound(_))));
    assert!(events.try_recv().is_err(), "a removal is not a drop");
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_location_table_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("director.redb");
    let (e1, e2, e3) = (PeerId::random(), PeerId::random(), PeerId::random());
    let p = ProgramId([12; 32]);
    let other = ProgramId([13; 32]);
    let loc = |engine, state, load| Location {
        engine,
        state,
        load,
    };
    {
        let table = LocationTable::open(&path)?;
        table.insert(SegmentId::new(p, 0), &loc(e1, LocationState::Complete, 1))?;
        table.insert(SegmentId::new(p, 0), &loc(e2, LocationState::Filling, 0))?;
        table.insert(SegmentId::new(p, 1), &loc(e2, LocationState::Complete, 3))?;
        table.insert(SegmentId::new(p, 2), &loc(e3, LocationState::Complete, 0))?;
        table.insert(
            SegmentId::new(other, 0),
            &loc(e1, LocationState::Complete, 0),
        )?;
        // An update replaces the row.
        table.insert(SegmentId::new(p, 0), &loc(e2, LocationState::Complete, 2))?;
        assert!(table.remove(SegmentId::new(p, 2), &e3)?);
        assert!(!table.remove(SegmentId::new(p, 2), &e3)?);
    }
    let table = LocationTable::open(&path)?;
    let mut at0 = table.list(SegmentId::new(p, 0))?;
    at0.sort_by_key(|l| l.load);
    assert_eq!(
        at0,
        vec![
            loc(e1, LocationState::Complete, 1),
            loc(e2, LocationState::Complete, 2)
        ]
    );
    assert!(table.list(SegmentId::new(p, 2))?.is_empty());
    let all = table.for_program(p)?;
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].0 <= w[1].0), "in segment order");
    assert_eq!(all.iter().filter(|(i, _)| *i == SegmentIndex(1)).count(), 1);
    assert_eq!(table.for_program(other)?.len(), 1);
    let last = ProgramId([0xff; 32]);
    table.insert(SegmentId::new(last, 7), &loc(e3, LocationState::Filling, 0))?;
    assert_eq!(table.programs()?, vec![p, other, last]);
    assert!(table.remove(SegmentId::new(last, 7), &e3)?);
    assert_eq!(table.remove_engine(&e1)?, 2);
    assert_eq!(table.for_program(other)?, vec![]);
    Ok(())
}

#[tokio::test]
async fn the_throughput_probe_reports_both_directions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (write, read) = bench::throughput_probe(dir.path(), 8 << 20).await?;
    eprintln!("throughput_probe 8 MiB: write {write:.0} MB/s, read {read:.0} MB/s");
    assert!(write > 0.0 && read > 0.0);
    Ok(())
}

#[tokio::test]
async fn events_go_to_a_bounded_queue_and_never_block_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path(), 1, 3 * 1000);
    cfg.event_queue = 1;
    let (store, mut events): (SegmentStore, mpsc::Receiver<Event>) =
        SegmentStore::open(cfg).await?;
    // Nobody reads events: three evictions overflow a queue of one without stalling writes.
    for i in 0..6 {
        let id = seg(14, i);
        put(&store, id, &bytes(i as u8, 1000)).await?;
        store.set_held_elsewhere(id, true).await?;
    }
    assert!(matches!(events.try_recv()?, Event::Evicted { .. }));
    assert!(events.try_recv().is_err());
    store.shutdown().await?;
    Ok(())
}

/// `VODMESH_PROBE_MB=256 cargo test -p vodmesh-node --lib store::tests::probe_at_size -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement, not a check; sized by VODMESH_PROBE_MB"]
async fn probe_at_size() -> TestResult {
    let mb: u64 = std::env::var("VODMESH_PROBE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = match std::env::var_os("VODMESH_PROBE_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let (write, read) = bench::throughput_probe(dir.path(), mb << 20).await?;
    eprintln!("throughput_probe {mb} MiB: write {write:.0} MB/s, read {read:.0} MB/s");
    Ok(())
}

#[tokio::test]
async fn a_segment_keeps_its_chunk_group_tree_and_one_stored_without_gets_it_on_first_need()
-> TestResult {
    use vodmesh_proto::verified::Leaves;
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let id = seg(7, 0);
    let data = bytes(7, 1_000_000);
    put(&store, id, &data).await?;
    // Kept with the complete row: the leaves of the bytes, whose tree leads to the hash.
    let leaves = Leaves::of(&data);
    assert_eq!(store.kept_groups(id).await?, Some(leaves.to_bytes()));
    let outboard = store.outboard(id).await?.ok_or("no tree")?;
    assert_eq!(outboard, leaves.outboard());
    assert_eq!(outboard.root(), SegmentHash::of(&data));
    // A reader holds the same tree, as its reads are checked against it.
    assert_eq!(
        store.open_read(id).await?.outboard(),
        Some(leaves.outboard())
    );
    // Not complete here: none.
    assert_eq!(store.outboard(seg(7, 1)).await?, None);

    // As if stored before trees were kept: a reader has none (its reads are checked by the
    // chunk hashes kept then); computed from the bytes, and kept again.
    store.forget_groups(id).await?;
    assert_eq!(store.open_read(id).await?.outboard(), None);
    assert_eq!(store.outboard(id).await?, Some(leaves.outboard()));
    assert_eq!(store.kept_groups(id).await?, Some(leaves.to_bytes()));

    // One whose bytes rotted and that has no tree: the bytes are checked as they are read for
    // it, and the segment is dropped rather than given a tree of wrong bytes.
    let path = store.path_of(&id).ok_or("no path")?;
    store.forget_groups(id).await?;
    let mut stored = std::fs::read(&path)?;
    stored[300_000] ^= 1;
    std::fs::write(&path, &stored)?;
    assert!(matches!(
        store.outboard(id).await,
        Err(Error::Corrupt { .. })
    ));
    assert!(store.info(&id).is_none());
    store.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn runs_of_a_segment_are_read_into_their_places_and_runs_out_of_range_are_refused()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, 1 << 30)).await?;
    let id = seg(8, 0);
    let data = bytes(8, 100_000);
    put(&store, id, &data).await?;
    let mut reader = store.open_read(id).await?;
    // Two runs between bytes left as they are (a verified stream's parent nodes).
    let mut buf = vec![7u8; 64 + 16_384 + 64 + 1_000];
    buf[..64].fill(1);
    let runs = vec![(64, 16_384, 16_384), (64 + 16_384 + 64, 99_000, 1_000)];
    let read = reader.read_unchecked_runs(buf, runs).await?;
    assert!(read[..64].iter().all(|b| *b == 1));
    assert_eq!(&read[64..64 + 16_384], &data[16_384..32_768]);
    assert!(read[64 + 16_384..64 + 16_384 + 64].iter().all(|b| *b == 7));
    assert_eq!(&read[64 + 16_384 + 64..], &data[99_000..]);
    // Past the segment's end, or past the buffer's: refused, nothing read.
    for run in [(0, 99_500, 1_000), (100, 0, 1_000), (usize::MAX, 0, 2)] {
        let refused = reader.read_unchecked_runs(vec![0; 1_000], vec![run]).await;
        assert!(
            matches!(refused, Err(Error::OutOfRange { .. })),
            "{run:?}: {refused:?}"
        );
    }
    Ok(())
}

/// A store bounded only by its disks (`--capacity 0`) refuses at once a segment its file
/// system has no room for, where it reserved it and failed at the disk's end (ENOSPC, with
/// the index on the same disk failing after it). The control: a segment that fits is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_larger_than_the_disk_s_free_space_is_refused_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    // What `--capacity 0` gives the store: a quota no disk reaches.
    let (store, _events) = SegmentStore::open(config(dir.path(), 1, u64::MAX / 4)).await?;
    let free = {
        let st = rustix::fs::statvfs(dir.path())?;
        st.f_bavail.saturating_mul(st.f_frsize)
    };
    let (big, small) = (seg(9, 0), seg(9, 1));
    let need = free.saturating_add(1 << 30);
    match store.begin_write(big, SegmentHash::of(b"x"), need).await {
        Err(Error::Full { need: n, .. }) => assert_eq!(n, need),
        Err(e) => return Err(format!("expected Full, got {e:?}").into()),
        Ok(_) => return Err("a segment larger than the disk was taken".into()),
    }
    assert_eq!(store.filled(&big), None);
    let data = bytes(3, 100_000);
    put(&store, small, &data).await?;
    assert_eq!(store.read_range(small, 0, 100_000).await?, data);
    Ok(())
}
