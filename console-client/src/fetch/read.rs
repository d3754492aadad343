//! Reading a segment from an engine's stream once it is open: raw bytes checked against the
//! manifest's hash as a whole ([`raw`]), or verified mode, each chunk group checked as it
//! comes and handed to the player at once or kept ([`verified`]); either way resumed over what
//! earlier attempts brought ([`Partial`]).

use futures::{AsyncReadExt, FutureExt};
use libp2p::PeerId;
use tokio::sync::mpsc::error::TrySendError;
use vodmesh_proto::SegmentHash;
use vodmesh_proto::manifest::SegmentEntry;
use vodmesh_proto::verified as tree;

use super::bulk::Wire;
use super::{Attempt, AttemptError, Early, Group, READ_CHUNK, READ_STALL, Turn, Watch};
use crate::retry::Ended;

/// What the attempts of one fetch brought of its segment so far: the bytes kept, from the
/// segment's first byte on, or (at `--speed max`, verified) how far the groups handed to the
/// player reach. Kept bytes are always a prefix: raw bytes are checked as a whole.
#[derive(Default)]
pub(super) struct Partial {
    pub(super) bytes: Vec<u8>,
    /// How many of the first bytes were verified by chunk group already.
    pub(super) verified: u64,
    /// The end of the verified groups handed to the player and not kept (none kept then).
    handed: u64,
}

impl Partial {
    /// Where the next attempt resumes.
    pub(super) fn received(&self) -> u64 {
        if self.bytes.is_empty() {
            self.handed
        } else {
            self.bytes.len() as u64
        }
    }
}

/// Reads the rest of segment `entry` from `engine`'s raw stream into `partial` and
/// verifies the whole, telling `watch` of every byte and `turn` of what is left; the bytes
/// (and whether all were verified by group: never, here), or how the attempt ended. The
/// stream is read to the segment's end, no further (a bulk connection carries the next).
pub(super) async fn raw(
    entry: &SegmentEntry,
    engine: PeerId,
    s: &mut Wire,
    (whole, watch, turn): (&mut Partial, &Watch, &mut Turn),
) -> Result<(Vec<u8>, u64, bool), Attempt> {
    let partial = &mut whole.bytes;
    let size = entry.size as usize;
    let had = partial.len();
    partial.reserve(size.saturating_sub(had));
    let mut buf = vec![0u8; READ_CHUNK];
    while partial.len() < size {
        let n = (size - partial.len()).min(buf.len());
        let progress = partial.len() > had;
        let at = partial.len() as u64;
        let got = read_more(s, &mut buf[..n], engine, (at, progress)).await?;
        partial.extend_from_slice(&buf[..got]);
        watch.byte();
        turn.left((size - partial.len()) as u64);
    }
    check_whole(entry, engine, whole)
}

/// The whole segment in `partial`, checked against the manifest's hash unless every byte
/// was verified by group already: the bytes kept, the byte they start at (the segment's
/// size when every group went to the player) and whether every byte was verified by group.
#[allow(
    clippy::result_large_err,
    reason = "one value per failed attempt, moved once: boxing buys nothing"
)]
fn check_whole(
    entry: &SegmentEntry,
    engine: PeerId,
    partial: &mut Partial,
) -> Result<(Vec<u8>, u64, bool), Attempt> {
    if partial.bytes.is_empty() && partial.handed >= entry.size {
        return Ok((Vec::new(), entry.size, true));
    }
    let by_group = partial.verified >= entry.size;
    let bytes = std::mem::take(&mut partial.bytes);
    partial.verified = 0;
    if !by_group && SegmentHash::of(&bytes) != entry.hash {
        // Another attempt starts over at another engine; the bad bytes are never written.
        return Err(Attempt::Ended(
            Ended::Absent(engine),
            AttemptError::Unverified(engine),
        ));
    }
    Ok((bytes, 0, by_group))
}

/// Verified bytes a fetch hands the player in one piece at most: the groups that were read one
/// after another without waiting on the stream go together, so the player is woken once per
/// piece rather than once per 16 KiB group. A piece never waits for the stream: before a read
/// would wait, the groups verified so far go out.
pub(crate) const HAND_AT_MOST: usize = 4 * tree::GROUP as usize;

/// Reads the rest of segment `entry` from `engine`'s verified stream, which starts at byte
/// `from`: each chunk group is checked against the manifest's hash as it comes; one wrong
/// group or tree node ends the attempt there and the engine is avoided. Verified groups go
/// to the player's queue at once when the fetch has one ([`Early`], [`handed`]) and keep
/// nothing (raw bytes an earlier attempt kept excepted); otherwise they are kept in
/// `partial`, over any raw bytes an earlier attempt left there ([`kept`]). Tells `watch` of
/// every read, and `turn` of what is left after every group.
pub(super) async fn verified(
    entry: &SegmentEntry,
    (engine, from): (PeerId, u64),
    s: &mut Wire,
    (partial, watch, turn): (&mut Partial, &Watch, &mut Turn),
) -> Result<(Vec<u8>, u64, bool), Attempt> {
    let decoder = tree::Decoder::new(entry.size, entry.hash, from);
    match watch.early.as_ref().filter(|_| partial.bytes.is_empty()) {
        Some(early) => handed(entry, (engine, decoder), s, (partial, watch, turn), early).await?,
        None => kept(entry, (engine, decoder), s, (partial, watch, turn)).await?,
    }
    check_whole(entry, engine, partial)
}

/// [`verified`] keeping every verified group in `partial`. Holds one group besides it.
async fn kept(
    entry: &SegmentEntry,
    (engine, mut decoder): (PeerId, tree::Decoder),
    s: &mut Wire,
    (partial, watch, turn): (&mut Partial, &Watch, &mut Turn),
) -> Result<(), Attempt> {
    let had = partial.received();
    partial
        .bytes
        .reserve((entry.size as usize).saturating_sub(partial.bytes.len()));
    let mut item = vec![0u8; tree::GROUP as usize];
    while let Some(need) = decoder.need() {
        // No item is longer than a group; were one, `verify` would refuse the length.
        let buf = &mut item[..need.min(tree::GROUP as usize)];
        let mut filled = 0;
        while filled < buf.len() {
            let at = partial.received();
            filled += read_more(s, &mut buf[filled..], engine, (at, at > had)).await?;
            watch.byte();
        }
        if let Some((start, end)) = decoder.verify(buf).map_err(|c| forged(engine, c))? {
            // Resumed at the start of a group: what an earlier attempt brought of it is
            // replaced by these verified bytes.
            partial.bytes.truncate(start as usize);
            partial.bytes.extend_from_slice(buf);
            if start <= partial.verified {
                partial.verified = end;
            }
            turn.left(entry.size.saturating_sub(end));
        }
    }
    Ok(())
}

/// [`verified`] handing the verified groups to the player's queue `early` in pieces of up
/// to [`HAND_AT_MOST`] bytes, keeping none. A full queue (a segment not yet playing) holds
/// the stream where it is: it is read no further until the player takes a piece, and the
/// engine turn is given back meanwhile. What was verified goes out before the attempt ends,
/// however it ends; `partial` moves past a piece only once it is queued, so an attempt
/// dropped while it waits (its time limit) resumes at that piece, not past it.
async fn handed(
    entry: &SegmentEntry,
    (engine, mut decoder): (PeerId, tree::Decoder),
    s: &mut Wire,
    (partial, watch, turn): (&mut Partial, &Watch, &mut Turn),
    early: &Early,
) -> Result<(), Attempt> {
    let had = partial.handed;
    // The piece: `ready` verified bytes from byte `start` of the segment, then the item
    // being read.
    let mut piece = Piece {
        bytes: Vec::with_capacity(HAND_AT_MOST),
        ready: 0,
        start: decoder.start(),
        said: false,
    };
    let ended = 'items: loop {
        let Some(need) = decoder.need() else {
            break Ok(());
        };
        let need = need.min(tree::GROUP as usize);
        if piece.ready + need > HAND_AT_MOST {
            piece.hand(entry, (partial, watch, turn), early).await;
        }
        piece.bytes.resize(piece.ready + need, 0);
        let mut filled = 0;
        while filled < need {
            // Progress: a piece went out, or one is verified (it goes out however this ends).
            let at = piece.start + piece.ready as u64;
            let progress = partial.handed > had || piece.ready > 0;
            let buf = &mut piece.bytes[piece.ready + filled..];
            let more = read_more(s, buf, engine, (at, progress));
            let got = if piece.ready == 0 {
                more.await
            } else if let Some(got) = more.now_or_never() {
                got
            } else {
                // The stream has nothing yet: what is verified goes out before the wait.
                piece.hand(entry, (partial, watch, turn), early).await;
                continue;
            };
            match got {
                Ok(got) => filled += got,
                Err(ended) => break 'items Err(ended),
            }
            watch.byte();
        }
        match decoder.verify(&piece.bytes[piece.ready..]) {
            // A tree node: checked, and not part of the media.
            Ok(None) => piece.bytes.truncate(piece.ready),
            Ok(Some((start, end))) => {
                if piece.ready == 0 {
                    piece.start = start;
                }
                piece.ready += need;
                turn.left(entry.size.saturating_sub(end));
            }
            Err(cause) => break Err(forged(engine, cause)),
        }
    };
    piece.hand(entry, (partial, watch, turn), early).await;
    ended
}

/// Verified groups on their way to the player ([`handed`]).
struct Piece {
    /// `ready` verified bytes, then the item being read, if any.
    bytes: Vec<u8>,
    ready: usize,
    /// The segment's byte the verified bytes start at.
    start: u64,
    /// Whether the fetch said it waits for the player yet (said once).
    said: bool,
}

impl Piece {
    /// Puts the verified bytes on the player's queue (waiting while it is full) and moves
    /// `partial` past them; the item being read stays, as the start of the next piece.
    async fn hand(
        &mut self,
        entry: &SegmentEntry,
        (partial, watch, turn): (&mut Partial, &Watch, &mut Turn),
        early: &Early,
    ) {
        if self.ready == 0 {
            return;
        }
        let mut next = Vec::with_capacity(HAND_AT_MOST);
        next.extend_from_slice(&self.bytes[self.ready..]);
        self.bytes.truncate(self.ready);
        let bytes = std::mem::replace(&mut self.bytes, next);
        let end = self.start + self.ready as u64;
        let said = &mut self.said;
        let say = move || {
            if !std::mem::replace(said, true) {
                tracing::debug!(index = %entry.index, at = end, "queue full: the stream waits for the player");
            }
        };
        hand_out(early, (self.start, bytes), (watch, turn), say).await;
        // Only once it is queued: an attempt dropped while it waits resumes here.
        partial.handed = end;
        self.start = end;
        self.ready = 0;
    }
}

/// The attempt's end for bytes that failed verification: the engine is avoided.
fn forged(engine: PeerId, cause: tree::VerifyError) -> Attempt {
    tracing::warn!(%engine, %cause, "bytes failed verification: engine left");
    Attempt::Ended(
        Ended::Absent(engine),
        AttemptError::Forged { engine, cause },
    )
}

/// Puts a verified group on the player's queue; when it is full, gives the engine turn back
/// and waits (not silent meanwhile: the hedge leaves a fetch alone that waits for the player).
/// A queue the player dropped (a seek ended the run) takes nothing: the fetch is dropped next.
/// `waits` is called before it waits.
async fn hand_out(
    early: &Early,
    group: Group,
    (watch, turn): (&Watch, &mut Turn),
    waits: impl FnOnce(),
) {
    match early.try_send(group) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(group)) => {
            waits();
            turn.release();
            watch.queue(true);
            let waiting = watch.held.wait();
            let _ = early.send(group).await;
            drop(waiting);
            watch.queue(false);
        }
    }
}

/// One read of an attempt's stream from `engine` into `buf` (not empty), within
/// [`READ_STALL`], with `at` bytes of the segment had and `progress` made by this attempt:
/// how many bytes came, or how the attempt ended. The end of the stream is an end here: the
/// segment is not whole yet (handed over, or the engine went away; the next attempt
/// resumes); a silent one (frozen, cut off) is resumed elsewhere.
async fn read_more(
    s: &mut Wire,
    buf: &mut [u8],
    engine: PeerId,
    (at, progress): (u64, bool),
) -> Result<usize, Attempt> {
    match tokio::time::timeout(READ_STALL, s.read(buf)).await {
        Ok(Ok(0)) => Err(Attempt::Ended(
            Ended::Broke { progress },
            AttemptError::EndedEarly { engine, at },
        )),
        Ok(Ok(got)) => Ok(got),
        Ok(Err(cause)) => Err(Attempt::Ended(
            Ended::Broke { progress },
            AttemptError::BrokeOff { engine, at, cause },
        )),
        Err(_) => Err(Attempt::Ended(
            Ended::Unreachable(engine),
            AttemptError::Stalled(engine),
        )),
    }
}

#[cfg(test)]
mod tests {
    use futures::AsyncWriteExt;
    use libp2p::identity::Keypair;
    use tokio::net::TcpListener;
    use vodmesh_proto::SegmentIndex;
    use vodmesh_proto::net::bulk::{Acceptor, Connector};
    use vodmesh_proto::verified::{Item, Leaves};

    use super::*;

    const GROUP: usize = tree::GROUP as usize;

    /// A bulk connection on loopback whose engine side sends `data`'s verified stream from
    /// byte 0 as an engine does, with one byte flipped at `bad` (if any): the console's end,
    /// and the engine's peer id.
    async fn verified_wire(data: Vec<u8>, bad: Option<usize>) -> (Wire, PeerId) {
        let (console, engine) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let peer = engine.public().to_peer_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(&engine).unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (_, _, mut conn) = acceptor.accept(tcp).await.unwrap();
            let outboard = Leaves::of(&data).outboard();
            let mut sent = data.clone();
            if let Some(at) = bad {
                sent[at] ^= 1;
            }
            // The console leaves at a forged group: what it does not read fails here.
            for item in tree::plan(data.len() as u64, 0) {
                let bytes = match item {
                    Item::Parent { index, .. } => &outboard.pair(index).unwrap()[..],
                    Item::Group { start, end, .. } => &sent[start as usize..end as usize],
                };
                if conn.write_all(bytes).await.is_err() {
                    return;
                }
            }
            let _ = conn.flush().await;
        });
        let conn = Connector::new(&console, peer).unwrap().connect(addr).await;
        let wire = Wire::Bulk {
            conn: Box::new(conn.unwrap()),
            addr,
            reused: false,
        };
        (wire, peer)
    }

    /// At `--speed max` the verified groups reach the player's queue in order, in pieces of
    /// at most `HAND_AT_MOST`; when a group is forged, every group verified before it still
    /// goes out (and `partial` says so), and none of the forged one. Control: the same stream
    /// untouched brings every byte.
    #[tokio::test]
    async fn pieces_carry_every_verified_group_and_none_past_a_forged_one() {
        let data: Vec<u8> = (0..20 * GROUP + 100).map(|i| (i * 7 % 251) as u8).collect();
        let entry = SegmentEntry {
            index: SegmentIndex(0),
            duration_ms: 1000,
            size: data.len() as u64,
            hash: SegmentHash::of(&data),
        };
        for (bad, reach) in [(None, data.len()), (Some(9 * GROUP + 5), 9 * GROUP)] {
            let (mut wire, engine) = verified_wire(data.clone(), bad).await;
            let (early, mut queue) = tokio::sync::mpsc::channel(crate::fetch::GROUPS_QUEUED);
            let player = tokio::spawn(async move {
                let mut pieces = Vec::new();
                while let Some(piece) = queue.recv().await {
                    pieces.push(piece);
                }
                pieces
            });
            let watch = Watch::new(Some(early.clone()));
            let mut turn = Turn {
                permit: None,
                pass_early: false,
            };
            let mut partial = Partial::default();
            let decoder = tree::Decoder::new(entry.size, entry.hash, 0);
            let ended = handed(
                &entry,
                (engine, decoder),
                &mut wire,
                (&mut partial, &watch, &mut turn),
                &early,
            )
            .await;
            drop((watch, early));
            let pieces = player.await.unwrap();
            match bad {
                None => assert!(ended.is_ok()),
                Some(_) => assert!(matches!(
                    ended,
                    Err(Attempt::Ended(
                        Ended::Absent(e),
                        AttemptError::Forged { .. }
                    )) if e == engine
                )),
            }
            let mut played = Vec::new();
            for (start, bytes) in &pieces {
                assert_eq!(*start, played.len() as u64, "pieces out of order");
                assert!(!bytes.is_empty() && bytes.len() <= HAND_AT_MOST);
                played.extend_from_slice(bytes);
            }
            assert!(played == data[..reach], "{} of {reach} bytes", played.len());
            assert_eq!(partial.handed, reach as u64);
        }
    }
}
