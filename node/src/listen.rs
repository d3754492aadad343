//! Listening and announcing: the addresses a peer listens on, the ones it got, and the ones
//! it tells other hosts to dial.
//!
//! A listener on `0.0.0.0` (or `::`) is reachable at every address of the host, and libp2p
//! reports them one by one as its interface watcher learns them, with no sign of the last: a
//! peer that took the first report as the whole list announced `127.0.0.1` alone for QUIC.
//! So the port comes from libp2p's first report and the addresses from the host's interfaces,
//! read once at start ([`expand`]).
//!
//! What a peer announces ([`advertised`]) puts the addresses other hosts can use first: the
//! `--announce` addresses (a host behind NAT, or with a public address that is on no
//! interface), then its interface addresses, loopback last. Everything that takes "the
//! first address" of a station (its `director` line, consoles, `vodmesh status`) thus gets
//! one that works from another host when there is one.
//!
//! Engines of a station listen on the ports after the director's ([`engine_listen`]) and
//! are announced on the ports after each announced one ([`engine_announce`]), so that a
//! NAT can forward a fixed range of ports to the station.
//!
//! libp2p's TCP transport sets `SO_REUSEPORT` on every listener, so a second peer listening
//! on a TCP port another one listens on is not refused: the kernel shares the port and hands
//! each peer about half of the connections, which then fail with "unexpected peer id". A TCP
//! port is therefore bound once without `SO_REUSEPORT` first ([`port_free`]); QUIC's UDP
//! sockets are refused by the kernel as they are.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use vodmesh_proto::net::{dialable, is_tcp, with_peer};

/// How long a listener may take to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Most addresses a peer announces: they go into the signed station record, which must stay
/// under [`vodmesh_proto::station::MAX_RECORD`] (a host with dozens of interfaces announces
/// its first ones).
pub(crate) const MAX_ADDRS: usize = 16;

/// Why an address cannot be listened on or announced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--announce` address other hosts could not dial.
    #[error(
        "--announce {0}: not an address other hosts can dial (it needs an IP address or DNS \
         name other than 0.0.0.0, and a TCP port or a UDP port with /quic-v1, not 0)"
    )]
    NotDialable(Multiaddr),
    /// An `--announce` address of another peer.
    #[error("--announce {0}: it names another peer than this one ({1})")]
    OtherPeer(Multiaddr, PeerId),
    /// An engine's port would be past 65535.
    #[error("no port for engine {index} after {addr}: the ports after it run past 65535")]
    PortOverflow {
        /// The director's address.
        addr: Multiaddr,
        /// The engine.
        index: usize,
    },
    /// No listen address was given.
    #[error("no listen address given")]
    NoAddress,
    /// The transport refused the address.
    #[error("cannot listen on {addr}")]
    Refused {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listeners did not report their addresses in time.
    #[error("timed out waiting for listen addresses")]
    TimedOut,
    /// A listener failed before it reported its address.
    #[error("listening failed")]
    Failed(#[source] std::io::Error),
    /// A listener closed before it reported its address.
    #[error("listener on {addresses:?} closed: {reason}")]
    Closed {
        /// Its addresses.
        addresses: Vec<Multiaddr>,
        /// Why.
        reason: String,
    },
}

/// Whether the TCP port of `addr` (a fixed one: port 0 is always free) can be listened on by
/// this peer alone: bound without `SO_REUSEPORT`, which fails while any other socket listens
/// there, whatever that one set (`SO_REUSEADDR`, which std sets, still lets a port in
/// `TIME_WAIT` be taken again). Other addresses are left to the transport.
fn port_free(addr: &Multiaddr) -> std::io::Result<()> {
    let mut ip = None;
    for protocol in addr {
        match protocol {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(port) if port != 0 => {
                let Some(ip) = ip else { return Ok(()) };
                return match std::net::TcpListener::bind((ip, port)) {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        Err(std::io::Error::new(
                            e.kind(),
                            format!("TCP port {port} is in use (another process listens on it)"),
                        ))
                    }
                    Err(e) => Err(e),
                };
            }
            _ => {}
        }
    }
    Ok(())
}

/// Listens on every address in `addrs` and returns where the peer can be reached, each with
/// `/p2p/<peer id>`: per listener in the order of `addrs`, its port resolved and, on an
/// unspecified address, one address per interface address of the host. Other swarm events
/// that arrive meanwhile are dropped; the peer has no connections yet.
pub(crate) async fn listen_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<Vec<Multiaddr>, Error> {
    if addrs.is_empty() {
        return Err(Error::NoAddress);
    }
    let mut ids = Vec::new();
    for addr in addrs {
        port_free(addr).map_err(|source| Error::Refused {
            addr: addr.clone(),
            source,
        })?;
        let id = (swarm.listen_on(addr.clone())).map_err(|e| Error::Refused {
            addr: addr.clone(),
            source: match e {
                libp2p::TransportError::Other(e) => e,
                libp2p::TransportError::MultiaddrNotSupported(_) => std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no transport for this address",
                ),
            },
        })?;
        ids.push(id);
    }
    let mut got: Vec<Option<Multiaddr>> = vec![None; ids.len()];
    let peer = *swarm.local_peer_id();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while got.iter().any(Option::is_none) {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| Error::TimedOut)?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(i) = ids.iter().position(|id| *id == listener_id) {
                    got[i].get_or_insert(address);
                }
            }
            SwarmEvent::ListenerError { error, .. } => return Err(Error::Failed(error)),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                let reason = match reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(Error::Closed { addresses, reason });
            }
            _ => {}
        }
    }
    let interfaces = interface_ips();
    let mut all = Vec::new();
    for (asked, first) in addrs.iter().zip(got.into_iter().flatten()) {
        for addr in expand(asked, &first, &interfaces) {
            let addr = with_peer(&addr, peer);
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    Ok(all)
}

/// The addresses of the host's interfaces; none when they cannot be read (a listener on
/// `0.0.0.0` is then announced as libp2p first reported it).
fn interface_ips() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the host's interface addresses");
            Vec::new()
        }
    }
}

/// Where a listener asked for at `asked` can be reached, given the first address libp2p
/// reported for it (`first`: the port resolved) and the host's interface addresses: on an
/// unspecified IP, `first` at every interface address of the same family (IPv6 link-local
/// ones left out: they need a scope no multiaddr carries), else `first` itself.
pub(crate) fn expand(
    asked: &Multiaddr,
    first: &Multiaddr,
    interfaces: &[IpAddr],
) -> Vec<Multiaddr> {
    let unspecified = |want_v4: bool| {
        asked.iter().any(|p| match p {
            Protocol::Ip4(ip) => want_v4 && ip.is_unspecified(),
            Protocol::Ip6(ip) => !want_v4 && ip.is_unspecified(),
            _ => false,
        })
    };
    let (v4, v6) = (unspecified(true), unspecified(false));
    if !v4 && !v6 {
        return vec![first.clone()];
    }
    let mut out: Vec<Multiaddr> = interfaces
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) if v4 => Some(Protocol::Ip4(*ip)),
            IpAddr::V6(ip) if v6 && !ip.is_unicast_link_local() => Some(Protocol::Ip6(*ip)),
            _ => None,
        })
        .map(|ip| {
            first
                .iter()
                .map(|p| match p {
                    Protocol::Ip4(_) | Protocol::Ip6(_) => ip.clone(),
                    other => other,
                })
                .collect()
        })
        .collect();
    if !out.contains(first) {
        // What libp2p reported is true whatever the interface list says.
        out.push(first.clone());
    }
    out
}

/// What a peer announces: `announce` first, in order, then the addresses it listens on
/// (`listened`), those other hosts can reach before link-local and loopback ones, without
/// repeats and at most [`MAX_ADDRS`]. The first one is the one to give other hosts.
pub(crate) fn advertised(announce: &[Multiaddr], listened: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut local = listened.to_vec();
    // Stable: within a rank, the order of --listen (TCP first by default).
    local.sort_by_key(rank);
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in announce.iter().chain(&local) {
        if !out.contains(addr) && out.len() < MAX_ADDRS {
            out.push(addr.clone());
        }
    }
    out
}

/// 0: reachable from other hosts; 1: only on the link; 2: only on this host.
fn rank(addr: &Multiaddr) -> u8 {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_loopback() => 2,
        Some(Protocol::Ip6(ip)) if ip.is_loopback() => 2,
        Some(Protocol::Ip4(ip)) if ip.is_link_local() => 1,
        Some(Protocol::Ip6(ip)) if ip.is_unicast_link_local() => 1,
        _ => 0,
    }
}

/// Checks an `--announce` address of peer `peer` and returns it ending in `/p2p/<peer>`.
pub(crate) fn announced(addr: &Multiaddr, peer: PeerId) -> Result<Multiaddr, Error> {
    if let Some(other) = vodmesh_proto::net::peer_of(addr).filter(|p| *p != peer) {
        return Err(Error::OtherPeer(addr.clone(), other));
    }
    let host = matches!(
        addr.iter().next(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    );
    let transport = is_tcp(addr) || addr.iter().any(|p| matches!(p, Protocol::QuicV1));
    if !host || !transport || !dialable(addr) || port(addr).is_none() {
        return Err(Error::NotDialable(addr.clone()));
    }
    Ok(with_peer(addr, peer))
}

/// The TCP or UDP port of `addr`.
fn port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

/// `addr` without `/p2p/`, its TCP or UDP port moved up by `by` (port 0 stays 0: the system
/// chooses); `None` past 65535.
fn shift_port(addr: &Multiaddr, by: usize) -> Option<Multiaddr> {
    let shift = |port: u16| -> Option<u16> {
        if port == 0 {
            return Some(0);
        }
        u16::try_from(usize::from(port).checked_add(by)?).ok()
    };
    let mut out = Multiaddr::empty();
    for p in addr.iter() {
        out.push(match p {
            Protocol::Tcp(port) => Protocol::Tcp(shift(port)?),
            Protocol::Udp(port) => Protocol::Udp(shift(port)?),
            Protocol::P2p(_) => continue,
            other => other,
        });
    }
    Some(out)
}

/// Where in-process engine `index` of a station whose director listens on `director`
/// listens: the same hosts, on the port after the director's and the engines' before it
/// (`4001` -> engine 0 on `4002`, engine 1 on `4003`), or a port the system chooses when the
/// director's is.
pub(crate) fn engine_listen(director: &[Multiaddr], index: usize) -> Result<Vec<Multiaddr>, Error> {
    shifted(director, index)
}

/// What in-process engine `index` announces of a station announced at `announce`: the same
/// hosts, on the ports after each announced one, as [`engine_listen`] (a NAT forwards the
/// director's port and the next ones, one per engine, to the station).
pub(crate) fn engine_announce(
    announce: &[Multiaddr],
    index: usize,
) -> Result<Vec<Multiaddr>, Error> {
    shifted(announce, index)
}

fn shifted(addrs: &[Multiaddr], index: usize) -> Result<Vec<Multiaddr>, Error> {
    addrs
        .iter()
        .map(|a| {
            shift_port(a, index.saturating_add(1)).ok_or_else(|| Error::PortOverflow {
                addr: a.clone(),
                index,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap_or_else(|_| Multiaddr::empty())
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }

    #[tokio::test]
    async fn a_tcp_port_another_peer_listens_on_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        use libp2p::identity::Keypair;
        let swarm = || {
            vodmesh_proto::net::build_swarm(Keypair::generate_ed25519(), |_| {
                libp2p::swarm::dummy::Behaviour
            })
        };
        // The first peer listens on a port of the system's choosing.
        let mut first = swarm()?;
        let got = listen_all(&mut first, &[a("/ip4/127.0.0.1/tcp/0")]).await?;
        let port = (got.first().into_iter().flatten())
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .ok_or("no TCP port")?;
        // A second peer on that port is refused, where libp2p alone shared it (SO_REUSEPORT).
        let taken = a(&format!("/ip4/127.0.0.1/tcp/{port}"));
        let refused = listen_all(&mut swarm()?, std::slice::from_ref(&taken)).await;
        let Err(Error::Refused { addr, source }) = refused else {
            return Err(format!("not refused: {refused:?}").into());
        };
        assert_eq!(
            (addr, source.kind()),
            (taken, std::io::ErrorKind::AddrInUse)
        );
        assert!(source.to_string().contains("in use"), "{source}");
        // The control: once the first peer is gone, the port is free for the second.
        drop(first);
        let mut second = swarm()?;
        listen_all(&mut second, &[a(&format!("/ip4/127.0.0.1/tcp/{port}"))]).await?;
        Ok(())
    }

    #[test]
    fn an_unspecified_listener_is_reachable_at_every_interface_address_of_its_family() {
        let hosts = ips(&[
            "127.0.0.1",
            "192.0.2.2",
            "10.1.1.1",
            "::1",
            "fe80::1",
            "2001:db8::5",
        ]);
        // libp2p's first report may be any one of them; the port is what it tells.
        let got = expand(
            &a("/ip4/0.0.0.0/udp/0/quic-v1"),
            &a("/ip4/127.0.0.1/udp/4711/quic-v1"),
            &hosts,
        );
        assert_eq!(
            got,
            vec![
                a("/ip4/127.0.0.1/udp/4711/quic-v1"),
                a("/ip4/192.0.2.2/udp/4711/quic-v1"),
                a("/ip4/10.1.1.1/udp/4711/quic-v1"),
            ]
        );
        let got = expand(&a("/ip6/::/tcp/0"), &a("/ip6/::1/tcp/9"), &hosts);
        assert_eq!(got, vec![a("/ip6/::1/tcp/9"), a("/ip6/2001:db8::5/tcp/9")]);
    }

    #[test]
    fn a_specific_listener_is_what_libp2p_reported() {
        let got = expand(
            &a("/ip4/10.77.0.1/tcp/0"),
            &a("/ip4/10.77.0.1/tcp/555"),
            &ips(&["127.0.0.1", "10.77.0.1", "10.9.9.9"]),
        );
        assert_eq!(got, vec![a("/ip4/10.77.0.1/tcp/555")]);
        // Interfaces unknown: the report stands.
        let got = expand(&a("/ip4/0.0.0.0/tcp/0"), &a("/ip4/127.0.0.1/tcp/7"), &[]);
        assert_eq!(got, vec![a("/ip4/127.0.0.1/tcp/7")]);
    }

    #[test]
    fn announced_addresses_come_first_then_routable_ones_then_loopback() {
        let listened = [
            a("/ip4/127.0.0.1/tcp/1"),
            a("/ip4/192.0.2.2/tcp/1"),
            a("/ip4/127.0.0.1/udp/1/quic-v1"),
            a("/ip4/169.254.3.3/udp/1/quic-v1"),
            a("/ip4/192.0.2.2/udp/1/quic-v1"),
        ];
        assert_eq!(
            advertised(&[], &listened),
            vec![
                a("/ip4/192.0.2.2/tcp/1"),
                a("/ip4/192.0.2.2/udp/1/quic-v1"),
                a("/ip4/169.254.3.3/udp/1/quic-v1"),
                a("/ip4/127.0.0.1/tcp/1"),
                a("/ip4/127.0.0.1/udp/1/quic-v1"),
            ]
        );
        let nat = [a("/dns4/example.org/tcp/4001"), a("/ip4/192.0.2.2/tcp/1")];
        let got = advertised(&nat, &listened);
        assert_eq!(
            got[..3],
            [nat[0].clone(), nat[1].clone(), listened[4].clone()]
        );
        assert_eq!(got.len(), 6, "no address twice: {got:?}");
        // Loopback only when that is all there is.
        assert_eq!(advertised(&[], &listened[..1]), vec![listened[0].clone()]);
        // Capped, announced ones kept.
        let many: Vec<Multiaddr> = (1..=40u16)
            .map(|p| a(&format!("/ip4/192.0.2.2/tcp/{p}")))
            .collect();
        let got = advertised(&nat, &many);
        assert_eq!(got.len(), MAX_ADDRS);
        assert_eq!(got[0], nat[0]);
    }

    #[test]
    fn engines_take_the_ports_after_the_directors() -> Result<(), Error> {
        let director = [
            a("/ip4/0.0.0.0/tcp/4001"),
            a("/ip4/0.0.0.0/udp/4001/quic-v1"),
        ];
        assert_eq!(
            engine_listen(&director, 1)?,
            vec![
                a("/ip4/0.0.0.0/tcp/4003"),
                a("/ip4/0.0.0.0/udp/4003/quic-v1")
            ]
        );
        // A port the system chooses stays chosen by the system.
        assert_eq!(
            engine_listen(&[a("/ip4/127.0.0.1/tcp/0")], 5)?,
            vec![a("/ip4/127.0.0.1/tcp/0")]
        );
        let peer = PeerId::random();
        let nat = announced(&a("/dns4/example.org/tcp/4001"), peer)?;
        assert_eq!(
            engine_announce(&[nat], 0)?,
            vec![a("/dns4/example.org/tcp/4002")]
        );
        assert!(matches!(
            engine_listen(&[a("/ip4/0.0.0.0/tcp/65535")], 0),
            Err(Error::PortOverflow { index: 0, .. })
        ));
        Ok(())
    }

    #[test]
    fn only_dialable_addresses_of_this_peer_are_announced() {
        let peer = PeerId::random();
        let ok = announced(&a("/ip4/203.0.113.7/udp/4001/quic-v1"), peer);
        assert!(matches!(ok, Ok(ref x) if vodmesh_proto::net::peer_of(x) == Some(peer)));
        for bad in [
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/203.0.113.7/tcp/0",
            "/ip4/203.0.113.7/udp/4001",
            "/tcp/4001",
            "/ip4/203.0.113.7",
        ] {
            assert!(
                matches!(announced(&a(bad), peer), Err(Error::NotDialable(_))),
                "{bad} was accepted"
            );
        }
        let other = with_peer(&a("/ip4/203.0.113.7/tcp/1"), PeerId::random());
        assert!(matches!(announced(&other, peer), Err(Error::OtherPeer(..))));
    }
}
