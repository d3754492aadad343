//! The transports alone, for the copy section's ceilings: bytes from memory over one libp2p
//! stream (the swarm vodmesh builds, or TCP with noise only) and over one bulk connection,
//! each timed with the CPU it took.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};
use vodmesh_proto::net::{IDLE_TIMEOUT, build_swarm};

use super::SEGMENT;
use crate::bench::own_cpu_time;

const RAW: StreamProtocol = StreamProtocol::new("/vodmesh-bench/raw/1");

/// Which security upgrades a raw-stream swarm offers on TCP.
#[derive(Clone, Copy)]
pub(super) enum Security {
    /// What every vodmesh peer builds (`net::build_swarm`).
    Vodmesh,
    /// TCP with noise alone.
    NoiseOnly,
}

fn raw_swarm(security: Security) -> Result<Swarm<vodmesh_proto::net::streams::Behaviour>> {
    Ok(match security {
        Security::Vodmesh => build_swarm(Keypair::generate_ed25519(), |_| {
            vodmesh_proto::net::streams::Behaviour::new()
        })?,
        Security::NoiseOnly => SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| vodmesh_proto::net::streams::Behaviour::new())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
            .build(),
    })
}

/// Moves `bytes` from memory over one libp2p stream between two fresh swarms; returns the
/// time from the first write to the receiver's acknowledgement of the last byte, and the CPU
/// this process (both swarms) took meanwhile.
pub(super) async fn raw_stream(
    security: Security,
    listen: Multiaddr,
    bytes: u64,
) -> Result<(Duration, Duration)> {
    let mut server = raw_swarm(security)?;
    let server_peer = *server.local_peer_id();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(RAW)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    server.listen_on(listen)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let reader = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.context("no inbound stream")?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let r = s.read(&mut buf).await?;
            if r == 0 {
                break;
            }
            n += r as u64;
        }
        s.write_all(&[1]).await?;
        s.close().await?;
        anyhow::Ok(n)
    });
    let mut client = raw_swarm(security)?;
    let mut control = client.behaviour().new_control();
    client.dial(addr.with(libp2p::multiaddr::Protocol::P2p(server_peer)))?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial: {error}"),
                _ => {}
            }
        }
    })
    .await
    .context("dial timed out")??;
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let data = vec![0x5au8; SEGMENT as usize];
    let result = async {
        let (start, cpu) = (Instant::now(), own_cpu_time());
        let mut s = control
            .open_stream(server_peer, RAW)
            .await
            .map_err(|e| anyhow::anyhow!("open stream: {e}"))?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SEGMENT) as usize;
            s.write_all(&data[..n]).await?;
            left -= n as u64;
        }
        s.close().await?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await?;
        let elapsed = start.elapsed();
        let cpu = own_cpu_time().saturating_sub(cpu);
        let got = reader.await??;
        if got != bytes {
            bail!("raw stream moved {got} of {bytes} bytes");
        }
        Ok((elapsed, cpu))
    }
    .await;
    server_task.abort();
    client_task.abort();
    result
}

/// The bulk path (`vodmesh_proto::net::bulk`, what consoles stream segments over): `bytes`
/// from memory over one bulk connection (TCP, libp2p's TLS handshake and certificates, AES-GCM
/// first, nothing above TLS), from the accepting side (an engine's) to the connecting side (a
/// console's), timed from the connecting side's request to its last byte read; the suite
/// negotiated and the CPU this process (both ends) took come back with it.
pub(super) async fn raw_bulk(bytes: u64) -> Result<(Duration, String, Duration)> {
    use vodmesh_proto::net::bulk;

    let (server_key, client_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let acceptor = bulk::Acceptor::new(&server_key)?;
    let connector = bulk::Connector::new(&client_key, server_key.public().to_peer_id())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let writer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let (_, _, mut conn) = acceptor.accept(tcp).await?;
        let mut go = [0u8; 1];
        conn.read_exact(&mut go).await?;
        let data = vec![0x5au8; SEGMENT as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SEGMENT) as usize;
            conn.write_all(&data[..n]).await?;
            left -= n as u64;
        }
        conn.close().await?;
        anyhow::Ok(())
    });
    let mut conn = connector.connect(addr).await?;
    let suite = bulk::cipher(&conn).unwrap_or_else(|| "unknown".to_string());
    let mut buf = vec![0u8; 256 * 1024];
    let (start, cpu) = (Instant::now(), own_cpu_time());
    conn.write_all(&[1]).await?;
    conn.flush().await?;
    let mut got = 0u64;
    while got < bytes {
        let r = conn.read(&mut buf).await?;
        if r == 0 {
            break;
        }
        got += r as u64;
    }
    let elapsed = start.elapsed();
    let cpu = own_cpu_time().saturating_sub(cpu);
    writer.await??;
    if got != bytes {
        bail!("the bulk connection moved {got} of {bytes} bytes");
    }
    Ok((elapsed, suite, cpu))
}
