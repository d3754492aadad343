//! The serving side of `/vodmesh/copy/1` ([`Server`]): the copy requests of other stations'
//! engines (and of sibling engines the director lets copy), on a libp2p stream or a bulk
//! connection alike, each admitted (`admit`: an engine token, the director's approval) before
//! it takes one of the engine's few copy slots.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, watch};
use vodmesh_proto::codec::write_frame;
use vodmesh_proto::copy::{CopyReply, CopyRequest, MAX_FRAME};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::TrustedIssuers;

use super::{Approvals, CHUNK, MAX_FETCHES};
use crate::control::EngineEvent;
use crate::engine::peers::{read_request, send_within};
use crate::engine::{Reporter, admit};
use crate::events::{Kind, Observer};
use crate::peer_slots::PeerSlots;
use crate::store::SegmentStore;

/// Copies an engine serves at once.
const MAX_SERVES: usize = 8;
/// Copies an engine serves one peer at once (an engine fetches [`MAX_FETCHES`] at most).
const MAX_SERVES_PER_PEER: usize = MAX_FETCHES;
/// A copy request whose engine token passes waits this long for the director's approval to
/// reach the engine (see `Server::admit`): well within a copier's patience for the reply.
const APPROVAL_WAIT: Duration = Duration::from_secs(1);
/// A peer that reads nothing of a copy for this long loses it (and its slot).
const WRITE_STALL: Duration = Duration::from_secs(10);

/// The serving side: answers the copy requests of other stations' engines.
#[derive(Clone)]
pub(crate) struct Server {
    me: PeerId,
    store: SegmentStore,
    allowed: watch::Receiver<Approvals>,
    trusted: TrustedIssuers,
    reporter: Reporter,
    /// Bytes per second per copy at most (0: as fast as the link goes).
    rate: u64,
    serves: Arc<Semaphore>,
    /// Copies each peer is being served.
    per_peer: PeerSlots,
    /// Hears of the copies served.
    pub(crate) observer: Observer,
}

impl Server {
    pub(crate) fn new(
        me: PeerId,
        store: SegmentStore,
        allowed: watch::Receiver<Approvals>,
        trusted: TrustedIssuers,
        reporter: Reporter,
        rate: u64,
    ) -> Self {
        Self {
            me,
            store,
            allowed,
            trusted,
            reporter,
            rate,
            serves: Arc::new(Semaphore::new(MAX_SERVES)),
            per_peer: PeerSlots::new(MAX_SERVES_PER_PEER),
            observer: Default::default(),
        }
    }

    /// Serves one copy stream from `peer` (at most [`MAX_SERVES`] at once, of which
    /// [`MAX_SERVES_PER_PEER`] to one peer). A slot is taken only once the request came (within
    /// [`REQUEST_WITHIN`](super::peers::REQUEST_WITHIN)) and its token passed: a peer that
    /// opens streams and sends nothing holds no slot.
    pub(crate) async fn serve(&self, peer: PeerId, mut stream: Stream) {
        let served = async {
            let request: CopyRequest = read_request(&mut stream, MAX_FRAME).await?;
            // A refusal closed the stream already.
            match self.exchange(peer, &mut stream, request).await? {
                true => stream.close().await,
                false => Ok(()),
            }
        };
        if let Err(e) = served.await {
            tracing::debug!(%peer, error = %e, "copy stream failed");
        }
    }

    /// Answers `request` from `peer` on `wire` (a libp2p stream or a bulk connection): the
    /// copy's bytes, whole (`true`), or a refusal (`false`). The same slots and checks hold
    /// on either: a bulk connection's peer id is its certificate's, as a libp2p stream's.
    pub(crate) async fn exchange<S>(
        &self,
        peer: PeerId,
        wire: &mut S,
        request: CopyRequest,
    ) -> std::io::Result<bool>
    where
        S: futures::AsyncRead + futures::AsyncWrite + Unpin,
    {
        if let Err(why) = self.admit(peer, &request).await {
            return refuse(wire, why).await;
        }
        let Some(_mine) = self.per_peer.take(peer) else {
            let why = format!("{MAX_SERVES_PER_PEER} copies to this peer already");
            return refuse(wire, why).await;
        };
        let _permit = self.serves.acquire().await;
        self.handle(peer, request, wire).await
    }

    /// Whether `peer` may have the copy it asks for; why not, counted, when it may not.
    ///
    /// The director approves a station's engines before it names this engine to them, but its
    /// approval comes through this engine's command loop, which a busy moment holds up (right
    /// after an ingest it waited 12-16 ms on the program's pin, when that was a commit per
    /// segment), while the copy request may come over a kept bulk connection at once: a peer
    /// whose engine token passes waits up to [`APPROVAL_WAIT`] for the approval. A peer with
    /// no such token is refused at once.
    async fn admit(&self, peer: PeerId, request: &CopyRequest) -> Result<(), String> {
        let segment = request.segment;
        let token = request.token.as_deref().map(Vec::as_slice);
        let check = |approved: Option<u64>| {
            let now = now_ms();
            admit::copy(
                &self.trusted,
                token,
                approved,
                (&segment.program, &peer),
                now,
            )
        };
        let approved = self.allowed.borrow().get(&peer).copied();
        let mut admitted = check(approved);
        if let Err(admit::Refusal::NotApproved) = admitted {
            admitted = check(approval(&self.allowed, peer, APPROVAL_WAIT).await);
        }
        admitted.map_err(|why| {
            tracing::info!(%peer, %segment, refused = %why, "copy refused");
            self.reporter.try_send(EngineEvent::Refused { copy: true });
            why.to_string()
        })
    }

    async fn handle<S>(
        &self,
        peer: PeerId,
        request: CopyRequest,
        stream: &mut S,
    ) -> std::io::Result<bool>
    where
        S: futures::AsyncRead + futures::AsyncWrite + Unpin,
    {
        let segment = request.segment;
        let (Some(info), Ok(mut reader)) = (
            self.store.info(&segment),
            self.store.open_read(segment).await,
        ) else {
            return refuse(stream, "segment not here".into()).await;
        };
        if request.offset > info.size {
            return refuse(stream, "offset past the end of the segment".into()).await;
        }
        // Verified where asked and the tree is known (a complete segment's, or a filling copy's
        // whose own source sent it): the leaves go first.
        let tree = request.verified.then(|| reader.tree()).flatten();
        let (size, hash) = (info.size, info.hash);
        let sending = match tree {
            Some(_) => CopyReply::Verified { size, hash },
            None => CopyReply::Sending { size, hash },
        };
        write_frame(&mut *stream, &sending).await?;
        if let Some(tree) = tree {
            send_within(&mut *stream, &tree.0.to_bytes(), WRITE_STALL).await?;
        }
        reader.seek(request.offset);
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        // Read unchecked: the receiver hashes every byte against the segment's hash (the
        // manifest's, or this engine's own offer for a sibling) and fails the copy at a wrong
        // one, so the bytes are not hashed here a second time; rot here is the scrub's to find.
        let mut next = reader
            .read_next_unchecked(Vec::new(), CHUNK)
            .await
            .map_err(std::io::Error::other)?;
        // Two buffers take turns: the chunk sent before this one's is read into next, and
        // not zeroed again (a fresh 256 KiB buffer per chunk was a memset per byte copied).
        let mut spare = Vec::new();
        while let Some(chunk) = next {
            // The next chunk is read from the store while this one is sent.
            let send = send_within(&mut *stream, &chunk, WRITE_STALL);
            let read = reader.read_next_unchecked(std::mem::take(&mut spare), CHUNK);
            let (sent_now, read) = tokio::join!(send, read);
            sent_now?;
            next = read.map_err(std::io::Error::other)?;
            sent += chunk.len() as u64;
            spare = chunk;
            if self.rate > 0 {
                // Paced to --copy-rate: no faster than `rate` bytes per second on average.
                let due = started + Duration::from_secs_f64(sent as f64 / self.rate as f64);
                tokio::time::sleep_until(due).await;
            }
        }
        stream.flush().await?;
        (self.observer).segment(self.me, segment, Kind::CopyServed { to: peer });
        Ok(true)
    }
}

/// `peer`'s approval in `allowed` (until when), as it stands or as it comes within `wait`;
/// `None` when none comes.
async fn approval(
    allowed: &watch::Receiver<Approvals>,
    peer: PeerId,
    wait: Duration,
) -> Option<u64> {
    let mut allowed = allowed.clone();
    let came = allowed.wait_for(|m| m.get(&peer).is_some_and(|u| *u >= now_ms()));
    let approvals = tokio::time::timeout(wait, came).await.ok()?.ok()?;
    approvals.get(&peer).copied()
}

/// Answers `Refused(why)`: the exchange did not end whole (`false`), the wire is closed.
async fn refuse<S>(wire: &mut S, why: String) -> std::io::Result<bool>
where
    S: futures::AsyncWrite + Unpin,
{
    write_frame(&mut *wire, &CopyReply::Refused(why)).await?;
    wire.close().await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_copy_request_waits_a_moment_for_an_approval_on_its_way() {
        let (peer, other) = (PeerId::random(), PeerId::random());
        let (tx, rx) = watch::channel(Approvals::new());
        let until = now_ms() + 60_000;
        // Already there: at once.
        tx.send_modify(|m| {
            m.insert(peer, until);
        });
        assert_eq!(approval(&rx, peer, APPROVAL_WAIT).await, Some(until));
        // On its way: it comes within the wait, and the request passes.
        let late = tokio::spawn(async move {
            tokio::time::sleep(APPROVAL_WAIT / 2).await;
            tx.send_modify(|m| {
                m.insert(other, until);
            });
            tx
        });
        assert_eq!(approval(&rx, other, APPROVAL_WAIT).await, Some(until));
        let tx = late.await.unwrap();
        // Never coming (a stranger, an approval past its time): none, after the wait.
        let started = tokio::time::Instant::now();
        assert_eq!(approval(&rx, PeerId::random(), APPROVAL_WAIT).await, None);
        assert_eq!(started.elapsed(), APPROVAL_WAIT);
        tx.send_modify(|m| {
            m.insert(peer, now_ms().saturating_sub(1));
        });
        assert_eq!(approval(&rx, peer, APPROVAL_WAIT).await, None);
    }
}
