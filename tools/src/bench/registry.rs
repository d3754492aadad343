//! The `registry` section: an in-process swarm of N registry servers (`registry-dht`'s
//! [`Server`]: the director's Kademlia behaviour and identify, driven as a director drives
//! them, talked to through a [`RegistryHandle`]), on loopback TCP.
//!
//! One server provides a program; every other one looks up its holders: latency p50/p99 and
//! the Kademlia requests each lookup sent (the iterative query's hops times its parallelism).
//! Reference: the same lookup in a swarm of two (one request). Then a new server joins and
//! provides a program: the time until every server finds it as a holder.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use vodmesh_proto::ProgramId;
use vodmesh_proto::net::build_swarm;
use vodmesh_registry::server::{Behaviour, BehaviourEvent, Server};
use vodmesh_registry::{PersistentStore, RegistryConfig, RegistryHandle, StoreLimits};

use super::{Row, quantile_ms, ratio};

/// One registry server and its event loop.
struct Node {
    peer: PeerId,
    addr: Multiaddr,
    handle: RegistryHandle,
    /// Requests sent by each finished provider lookup, in order.
    requests: Arc<Mutex<Vec<u32>>>,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(bootstrap: Option<&Node>) -> Result<Node> {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let store = PersistentStore::in_memory(peer, &StoreLimits::default());
    let config = RegistryConfig::default();
    let swarm = build_swarm(key, |k| Behaviour::new(k, store, &config))?;
    let (mut server, handle) = Server::new(swarm, 64);
    let swarm = server.swarm_mut();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    swarm.add_external_address(addr.clone());
    if let Some(b) = bootstrap {
        server.kad_mut().add_address(&b.peer, b.addr.clone());
    }
    let requests: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = server.next_event().await {
            if let SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetProviders(_),
                stats,
                step,
                ..
            })) = &event
                && step.last
                && let Ok(mut r) = seen.lock()
            {
                r.push(stats.num_requests());
            }
            server.on_event(event);
        }
    });
    if bootstrap.is_some() {
        handle.bootstrap().await?;
    }
    Ok(Node {
        peer,
        addr,
        handle,
        requests,
        task,
    })
}

fn program(n: u64) -> ProgramId {
    ProgramId(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

/// One timed holders lookup from `node`; whether it found `holder`, and the requests it sent.
async fn lookup(node: &Node, p: ProgramId, holder: PeerId) -> Result<(Duration, bool, u32)> {
    let t = Instant::now();
    let found = node.handle.holders(p).await?;
    let elapsed = t.elapsed();
    let requests = node
        .requests
        .lock()
        .ok()
        .and_then(|r| r.last().copied())
        .unwrap_or(0);
    Ok((elapsed, found.contains(&holder), requests))
}

/// Runs the section.
pub async fn run(quick: bool) -> Result<(Value, Vec<Row>)> {
    let n = if quick { 8 } else { 50 };
    let mut nodes = vec![start(None).await?];
    nodes.push(start(nodes.first()).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reference: a swarm of two.
    let p0 = program(0);
    nodes[0].handle.provide(p0).await?;
    let mut pair = Vec::new();
    for _ in 0..10 {
        pair.push(lookup(&nodes[1], p0, nodes[0].peer).await?.0);
    }
    let pair50 = quantile_ms(&pair, 0.5);

    // Each new server joins through a random earlier one.
    while nodes.len() < n {
        let via = rand_index(nodes.len());
        let node = start(nodes.get(via)).await?;
        nodes.push(node);
    }
    // Let identify and the bootstrap queries settle, then refresh every routing table once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        node.handle.bootstrap().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let p1 = program(1);
    nodes[0].handle.provide(p1).await?;
    let mut latencies = Vec::new();
    let mut requests = Vec::new();
    let mut found = 0usize;
    for node in nodes.iter().skip(1) {
        let (t, ok, r) = lookup(node, p1, nodes[0].peer).await?;
        latencies.push(t);
        requests.push(r);
        found += usize::from(ok);
    }
    let slowest: Vec<f64> = {
        let mut v: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        v.into_iter().take(3).map(super::round2).collect()
    };
    let order: Vec<u64> = latencies.iter().map(|d| d.as_millis() as u64).collect();
    requests.sort_unstable();
    let req50 = requests.get(requests.len() / 2).copied().unwrap_or(0);
    let req_max = requests.last().copied().unwrap_or(0);
    let (l50, l99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));

    // A new server joins and provides: until every server finds it.
    let t = Instant::now();
    let newcomer = start(nodes.get(rand_index(nodes.len()))).await?;
    let p2 = program(2);
    newcomer.handle.provide(p2).await?;
    let deadline = t + Duration::from_secs(60);
    let mut pending: Vec<&Node> = nodes.iter().collect();
    while !pending.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "{} servers did not find the newcomer within 60 s",
                pending.len()
            );
        }
        let mut still = Vec::new();
        for node in pending {
            if !node.handle.holders(p2).await?.contains(&newcomer.peer) {
                still.push(node);
            }
        }
        pending = still;
    }
    let seen_by_all = t.elapsed();
    let seen_ms = (seen_by_all.as_secs_f64() * 1000.0).round();

    let rows = vec![
        Row::new(
            "registry",
            format!("find holders, {n} servers, p50 (p99 {l99} ms), {req50} requests"),
            format!("{l50} ms"),
        )
        .vs(format!("2 servers {pair50} ms"), ratio(l50, pair50)),
        Row::new(
            "registry",
            format!("new server seen by all {n}"),
            format!("{seen_ms} ms"),
        ),
    ];
    let value = json!({
        "servers": n,
        "lookups": latencies.len(),
        "found": found,
        "p50_ms": l50,
        "p99_ms": l99,
        "requests_p50": req50,
        "requests_max": req_max,
        "two_servers_p50_ms": pair50,
        "vs_two_servers": ratio(l50, pair50),
        "new_server_seen_by_all_ms": seen_ms,
        "slowest_ms": slowest,
        "latencies_ms_in_order": order,
        "note": "hops are reported as the Kademlia requests one lookup sent (alpha = 3 in flight); the first lookups after the provide are the slow ones (latencies_ms_in_order), also with 8 s of settling",
    });
    Ok((value, rows))
}

fn rand_index(len: usize) -> usize {
    use rand::Rng;
    rand::thread_rng().gen_range(0..len.max(1))
}
