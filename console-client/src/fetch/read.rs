//! Reading a segment from an engine's stream once it is open: raw bytes checked against the
//! manifest's hash as a whole ([`raw`]), or verified mode, each chunk group checked as it
//! comes and handed to the player at once or kept ([`verified`]); either way resumed over what
//! earlier attempts brought ([`Partial`]).

use futures::AsyncReadExt;
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

/// Reads the rest of segment `entry` from `engine`'s verified stream, which starts at byte
/// `from`: each chunk group is checked against the manifest's hash as it comes; one wrong
/// group or tree node ends the attempt there and the engine is avoided. A verified group goes
/// to the player's queue at once when the fetch has one ([`Early`]) and keeps nothing (raw
/// bytes an earlier attempt kept excepted); otherwise it is kept in `partial`, over any raw
/// bytes an earlier attempt left there. A full queue (a segment not yet playing) holds the
/// stream where it is: it is read no further until the player takes a group, and the engine
/// turn is given back meanwhile. Holds one group besides `partial` and the queue. Tells
/// `watch` of every read, and `turn` of what is left after every group.
pub(super) async fn verified(
    entry: &SegmentEntry,
    (engine, from): (PeerId, u64),
    s: &mut Wire,
    (partial, watch, turn): (&mut Partial, &Watch, &mut Turn),
) -> Result<(Vec<u8>, u64, bool), Attempt> {
    let had = partial.received();
    let mut decoder = tree::Decoder::new(entry.size, entry.hash, from);
    let hand = watch.early.as_ref().filter(|_| partial.bytes.is_empty());
    if hand.is_none() {
        partial
            .bytes
            .reserve((entry.size as usize).saturating_sub(partial.bytes.len()));
    }
    let mut item = vec![0u8; tree::GROUP as usize];
    // Whether this stream waited for the player yet (said once).
    let mut held = false;
    while let Some(need) = decoder.need() {
        // No item is longer than a group; were one, `verify` would refuse the length.
        let need = need.min(tree::GROUP as usize);
        // A group handed out goes as the buffer it was read into.
        let mut fresh = Vec::new();
        let buf = match hand {
            Some(_) => {
                fresh.resize(need, 0);
                &mut fresh[..]
            }
            None => &mut item[..need],
        };
        let mut filled = 0;
        while filled < need {
            let at = partial.received();
            let got = read_more(s, &mut buf[filled..], engine, (at, at > had)).await?;
            filled += got;
            watch.byte();
        }
        match decoder.verify(buf) {
            Ok(None) => {}
            Ok(Some((start, end))) => {
                match hand {
                    Some(early) => {
                        let said = &mut held;
                        let say = move || {
                            if !std::mem::replace(said, true) {
                                tracing::debug!(index = %entry.index, at = end, "queue full: the stream waits for the player");
                            }
                        };
                        hand_out(early, (start, fresh), (watch, turn), say).await;
                        // Only once it is queued: an attempt dropped while it waits (its time
                        // limit) resumes at this group, not past it.
                        partial.handed = end;
                    }
                    None => {
                        // Resumed at the start of a group: what an earlier attempt brought of
                        // it is replaced by these verified bytes.
                        partial.bytes.truncate(start as usize);
                        partial.bytes.extend_from_slice(buf);
                        if start <= partial.verified {
                            partial.verified = end;
                        }
                    }
                }
                turn.left(entry.size.saturating_sub(end));
            }
            Err(cause) => {
                tracing::warn!(%engine, %cause, "bytes failed verification: engine left");
                return Err(Attempt::Ended(
                    Ended::Absent(engine),
                    AttemptError::Forged { engine, cause },
                ));
            }
        }
    }
    check_whole(entry, engine, partial)
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
            let _ = early.send(group).await;
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
