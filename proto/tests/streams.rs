//! vodmesh's stream behaviour between real libp2p peers on 127.0.0.1 (TCP, noise, yamux):
//! inbound streams queue up to their bound and none is dropped; past the bound the opener is
//! told `Busy`; one peer past its share of the queue is told `Busy` while another peer's
//! streams are still queued; an open to a peer not yet connected dials it; many openers at
//! once all get through. Every wait is on an event (a stream, an answer), none on a timer.

use std::collections::HashSet;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use vodmesh_proto::net::build_swarm;
use vodmesh_proto::net::streams::{Behaviour, Config, Control, IncomingStreams, OpenStreamError};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/test-streams/1");
/// Bounds every test, so that a lost stream fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A peer whose swarm runs in a task of its own.
struct Peer {
    id: PeerId,
    addr: Option<Multiaddr>,
    control: Control,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn swarm(config: Config) -> Result<Swarm<Behaviour>> {
    Ok(build_swarm(Keypair::generate_ed25519(), |_| {
        Behaviour::with_config(config)
    })?)
}

fn run(mut swarm: Swarm<Behaviour>, addr: Option<Multiaddr>) -> Peer {
    let id = *swarm.local_peer_id();
    let control = swarm.behaviour().new_control();
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Peer {
        id,
        addr,
        control,
        task,
    }
}

/// A peer listening on 127.0.0.1 (its address known once it listens), accepting `PROTOCOL`
/// with an inbound queue of `bound`, all of which one peer may hold.
async fn listener(bound: usize) -> Result<(Peer, IncomingStreams)> {
    shared_listener(bound, bound).await
}

/// [`listener`], with at most `per_peer` places of the queue held by one peer.
async fn shared_listener(bound: usize, per_peer: usize) -> Result<(Peer, IncomingStreams)> {
    let config = Config::default()
        .with_inbound_queue(bound)
        .with_inbound_per_peer(per_peer);
    let mut s = swarm(config)?;
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
            break address;
        }
    };
    let incoming = s.behaviour().new_control().accept(PROTOCOL)?;
    Ok((run(s, Some(addr)), incoming))
}

/// A peer that knows where `to` listens, not connected to it yet.
fn opener(to: &Peer) -> Result<Peer> {
    let mut s = swarm(Config::default())?;
    if let Some(addr) = &to.addr {
        s.add_peer_address(to.id, addr.clone());
    }
    Ok(run(s, None))
}

/// Opens a stream to `to` and writes `tag` on it.
async fn open_tagged(mut control: Control, to: PeerId, tag: u32) -> Result<libp2p::Stream> {
    let mut s = control.open_stream(to, PROTOCOL).await?;
    s.write_all(&tag.to_be_bytes()).await?;
    s.flush().await?;
    Ok(s)
}

/// Takes `n` streams from `incoming` and reads each one's tag.
async fn take_tags(incoming: &mut IncomingStreams, n: usize) -> Result<HashSet<(PeerId, u32)>> {
    let mut tags = HashSet::new();
    for _ in 0..n {
        let (peer, mut s) = incoming.next().await.ok_or("the acceptor ended")?;
        let mut tag = [0u8; 4];
        s.read_exact(&mut tag).await?;
        tags.insert((peer, u32::from_be_bytes(tag)));
    }
    Ok(tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_opens_to_a_paused_acceptor_all_arrive() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        const N: u32 = 500;
        let (server, mut incoming) = listener(512).await?;
        let client = opener(&server)?;
        let mut opens = tokio::task::JoinSet::new();
        for tag in 0..N {
            opens.spawn(open_tagged(client.control.clone(), server.id, tag));
        }
        // The acceptor takes nothing until every open has returned: all 500 are queued.
        let mut streams = Vec::new();
        while let Some(opened) = opens.join_next().await {
            streams.push(opened??);
        }
        let tags = take_tags(&mut incoming, N as usize).await?;
        let want: HashSet<(PeerId, u32)> = (0..N).map(|t| (client.id, t)).collect();
        assert_eq!(tags, want, "every stream arrived, each once");
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_the_opener_is_told_busy_and_at_the_bound_nobody_is() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        const BOUND: u32 = 64;
        let (server, mut incoming) = listener(BOUND as usize).await?;
        let client = opener(&server)?;
        // At the bound: every open is queued (the control case).
        let mut opens = tokio::task::JoinSet::new();
        for tag in 0..BOUND {
            opens.spawn(open_tagged(client.control.clone(), server.id, tag));
        }
        let mut held = Vec::new();
        while let Some(opened) = opens.join_next().await {
            held.push(opened??);
        }
        // Past it: each further open is answered busy, none lost.
        let mut control = client.control.clone();
        for _ in 0..8 {
            match control.open_stream(server.id, PROTOCOL).await {
                Err(OpenStreamError::Busy(p)) => assert_eq!(p, PROTOCOL),
                other => panic!("expected busy, got {:?}", other.map(|_| "a stream")),
            }
        }
        // One taken frees one place.
        let first = take_tags(&mut incoming, 1).await?;
        let next = open_tagged(client.control.clone(), server.id, BOUND).await?;
        let rest = take_tags(&mut incoming, BOUND as usize).await?;
        let mut tags: HashSet<u32> = first.iter().map(|&(_, t)| t).collect();
        tags.extend(rest.iter().map(|&(_, t)| t));
        assert_eq!(tags, (0..=BOUND).collect::<HashSet<_>>());
        drop((held, next));
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_share_is_told_busy_while_another_peer_is_still_queued() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        const BOUND: usize = 16;
        const SHARE: u32 = 4;
        let (server, mut incoming) = shared_listener(BOUND, SHARE as usize).await?;
        let flood = opener(&server)?;
        let other = opener(&server)?;
        // The flooding peer's share is queued; past it, it is told busy though the queue has
        // room.
        let mut held = Vec::new();
        for tag in 0..SHARE {
            held.push(open_tagged(flood.control.clone(), server.id, tag).await?);
        }
        let mut control = flood.control.clone();
        for _ in 0..4 {
            match control.open_stream(server.id, PROTOCOL).await {
                Err(OpenStreamError::Busy(p)) => assert_eq!(p, PROTOCOL),
                other => panic!("expected busy, got {:?}", other.map(|_| "a stream")),
            }
        }
        // The control case: another peer's streams are queued meanwhile, its share in full.
        for tag in 0..SHARE {
            held.push(open_tagged(other.control.clone(), server.id, 100 + tag).await?);
        }
        // A stream the application takes gives its peer's place back: the flooding peer's
        // first stream taken, it is queued once more.
        let first = take_tags(&mut incoming, 1).await?;
        assert_eq!(first, HashSet::from([(flood.id, 0)]));
        held.push(open_tagged(flood.control.clone(), server.id, SHARE).await?);
        let rest = take_tags(&mut incoming, 2 * SHARE as usize).await?;
        let want: HashSet<(PeerId, u32)> = (1..=SHARE)
            .map(|t| (flood.id, t))
            .chain((0..SHARE).map(|t| (other.id, 100 + t)))
            .collect();
        assert_eq!(rest, want);
        drop(held);
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_to_a_peer_not_yet_connected_dial_it_and_all_succeed() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        const N: u32 = 50;
        let (server, mut incoming) = listener(256).await?;
        let client = opener(&server)?;
        // All at once, before any connection: one dial, every open handed to it.
        let mut opens = tokio::task::JoinSet::new();
        for tag in 0..N {
            opens.spawn(open_tagged(client.control.clone(), server.id, tag));
        }
        let tags = take_tags(&mut incoming, N as usize).await?;
        while let Some(opened) = opens.join_next().await {
            opened??;
        }
        assert_eq!(tags.len(), N as usize);
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_to_a_peer_that_cannot_be_dialed_fails_instead_of_waiting() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        // No address known for this peer: the dial fails, and the open with it.
        let lonely = run(swarm(Config::default())?, None);
        let mut control = lonely.control.clone();
        match control.open_stream(PeerId::random(), PROTOCOL).await {
            Err(OpenStreamError::NotConnected(_)) => Ok(()),
            other => panic!(
                "expected a dial failure, got {:?}",
                other.map(|_| "a stream")
            ),
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_opens_from_several_peers_all_arrive() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        const PEERS: usize = 5;
        const EACH: u32 = 100;
        let (server, mut incoming) = listener(PEERS * EACH as usize).await?;
        let clients = (0..PEERS)
            .map(|_| opener(&server))
            .collect::<Result<Vec<_>>>()?;
        let mut opens = tokio::task::JoinSet::new();
        for client in &clients {
            for tag in 0..EACH {
                opens.spawn(open_tagged(client.control.clone(), server.id, tag));
            }
        }
        // Accepted as they come (an acceptor that keeps up), while they are opened.
        let tags = take_tags(&mut incoming, PEERS * EACH as usize).await?;
        while let Some(opened) = opens.join_next().await {
            opened??;
        }
        let want: HashSet<(PeerId, u32)> = clients
            .iter()
            .flat_map(|c| (0..EACH).map(move |t| (c.id, t)))
            .collect();
        assert_eq!(tags, want);
        Ok(())
    })
    .await?
}
