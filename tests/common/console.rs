//! Consoles in this process, for the tests that speak the control and stream protocols
//! themselves: console tokens and play credentials from a test's own issuer, a [`Console`]
//! that asks a director where a segment is and streams it from the engine named, viewers that
//! hold an engine's slot on purpose ([`StalledViewer`]), and waiting until a station holds a
//! whole program.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::AsyncReadExt;
use libp2p::{Multiaddr, PeerId};
use vodmesh_client::DirectorClient;
use vodmesh_console::play::{Credentials, PlayStats};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Activity, Request, Response, SegmentLocation};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::stream::{self as wire, StreamReply, StreamRequest};
use vodmesh_proto::token::{Audience, Issuer, Rights};
use vodmesh_proto::{ProgramId, SegmentId};

/// A console token for `console` from `issuer`: every right, valid for an hour from now.
pub fn console_token(issuer: &Issuer, console: PeerId) -> Result<Vec<u8>> {
    let now = vodmesh_proto::time::now_ms();
    Ok(issuer.issue(
        console,
        Audience::Console,
        Rights::All,
        now,
        now + 3_600_000,
    )?)
}

/// Credentials for `vodmesh_console::play`: a new identity and its console token from
/// `issuer`.
pub fn credentials(issuer: &Issuer) -> Result<Credentials> {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let token = console_token(issuer, key.public().to_peer_id())?;
    Ok(Credentials::new(key, token))
}

/// `vodmesh-console play --speed max` of `program` from the director at `node` into `out`, as a
/// console with a token of `issuer`'s: what it says it played.
pub async fn play_max<W: tokio::io::AsyncWrite + Unpin>(
    node: &Multiaddr,
    issuer: &Issuer,
    program: ProgramId,
    out: &mut W,
) -> Result<PlayStats> {
    let credentials = credentials(issuer)?;
    let program = program.to_string();
    let (speed, no_controls) = (vodmesh_console::play::Speed::Max, None);
    let play = vodmesh_console::play::play(
        node,
        &credentials,
        &program,
        0.0,
        speed,
        out,
        no_controls,
        |_| {},
    );
    Ok(play.await?)
}

/// A console connected to one director: its own identity and (with an issuer) its token.
pub struct Console {
    /// The connection to the director (and, through it, to engines).
    pub client: DirectorClient,
    /// Its console token, empty without an issuer.
    pub token: Option<serde_bytes::ByteBuf>,
}

impl Console {
    /// A new console connected to the director at `director`, with a console token of
    /// `issuer` when given.
    pub async fn connect(director: &Multiaddr, issuer: Option<&Issuer>) -> Result<Self> {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let token = match issuer {
            Some(issuer) => Some(console_token(issuer, key.public().to_peer_id())?.into()),
            None => None,
        };
        let client = DirectorClient::connect(director, Some(key)).await?;
        Ok(Self { client, token })
    }

    /// The director's answer to `Locate` for segment `index` of `program` (a complete copy
    /// only, with `complete`); another answer is an error.
    pub async fn locate(
        &self,
        program: ProgramId,
        index: impl Into<vodmesh_proto::SegmentIndex>,
        complete: bool,
    ) -> Result<SegmentLocation> {
        self.ask_locate(program, index.into(), (complete, 0)).await
    }

    /// [`Console::locate`] of segment `index`, asking for the `ahead` segments after it too.
    pub async fn locate_ahead(
        &self,
        program: ProgramId,
        index: impl Into<vodmesh_proto::SegmentIndex>,
        ahead: u8,
    ) -> Result<SegmentLocation> {
        self.ask_locate(program, index.into(), (false, ahead)).await
    }

    /// [`Console::locate`] of segment `index`, saying the engines `busy` answered it busy.
    pub async fn locate_busy(
        &self,
        program: ProgramId,
        index: impl Into<vodmesh_proto::SegmentIndex>,
        busy: Vec<PeerId>,
    ) -> Result<SegmentLocation> {
        let request = Request::Locate {
            program,
            index: index.into(),
            complete: false,
            avoid: Vec::new(),
            busy,
            ahead: 0,
            token: self.token.clone(),
        };
        match self.client.request(request).await? {
            Response::Location(l) => Ok(l),
            other => bail!("unexpected answer to Locate: {other:?}"),
        }
    }

    async fn ask_locate(
        &self,
        program: ProgramId,
        index: vodmesh_proto::SegmentIndex,
        (complete, ahead): (bool, u8),
    ) -> Result<SegmentLocation> {
        let request = Request::Locate {
            program,
            index,
            complete,
            avoid: Vec::new(),
            busy: Vec::new(),
            ahead,
            token: self.token.clone(),
        };
        match self.client.request(request).await? {
            Response::Location(l) => Ok(l),
            other => bail!("unexpected answer to Locate: {other:?}"),
        }
    }

    /// The director's counters.
    pub async fn activity(&self) -> Result<Activity> {
        match self.client.request(Request::Activity).await? {
            Response::Activity(a) => Ok(a),
            other => bail!("unexpected answer to Activity: {other:?}"),
        }
    }

    /// The director's station record, verified: its engines, each with its streams.
    pub async fn station(&self) -> Result<StationRecord> {
        match self.client.request(Request::Station).await? {
            Response::Station(s) => Ok(StationRecord::verify(&s, vodmesh_proto::time::now_ms())?),
            other => bail!("unexpected answer to Station: {other:?}"),
        }
    }

    /// The director's count of each engine's streams, in the order of its record.
    pub async fn streams(&self) -> Result<Vec<(PeerId, u32)>> {
        let record = self.station().await?;
        Ok(record
            .engines
            .iter()
            .map(|e| (e.peer_id, e.streams))
            .collect())
    }

    /// Makes `engine` reachable at `addrs`.
    pub async fn reach(&self, engine: PeerId, addrs: &[Multiaddr]) -> Result<()> {
        self.client.add_addresses(engine, addrs.to_vec()).await?;
        Ok(())
    }

    /// A stream request for `segment` from byte `offset`, playing from byte `play_from`,
    /// with this console's token.
    pub fn request(&self, segment: SegmentId, offset: u64, play_from: u64) -> StreamRequest {
        StreamRequest {
            segment,
            offset,
            token: self.token.clone(),
            play_from,
            verified: false,
        }
    }

    /// Sends `request` to `engine` (reachable already) on a stream of its own; the stream and
    /// the engine's first answer.
    pub async fn ask(
        &self,
        engine: PeerId,
        request: &StreamRequest,
    ) -> Result<(libp2p::Stream, StreamReply)> {
        let mut stream = self.client.open_stream(engine, wire::PROTOCOL).await?;
        write_frame(&mut stream, request).await?;
        let reply = read_frame(&mut stream, wire::MAX_FRAME).await?;
        Ok((stream, reply))
    }

    /// Streams segment `segment` whole from `engine`, as a console does once its director
    /// named the engine; fails unless the engine streams it.
    pub async fn stream(&self, engine: PeerId, segment: SegmentId) -> Result<Vec<u8>> {
        let (stream, reply) = self.ask(engine, &self.request(segment, 0, 0)).await?;
        let StreamReply::Streaming { size, .. } = reply else {
            bail!("engine {engine} answered {reply:?}");
        };
        let got = read_rest(stream).await?;
        anyhow::ensure!(got.len() as u64 == size, "{} of {size} bytes", got.len());
        Ok(got)
    }

    /// Locates segment `index` of `program` and streams it whole from the engine named.
    pub async fn play_segment(&self, program: ProgramId, index: u32) -> Result<Vec<u8>> {
        let location = self.locate(program, index, false).await?;
        self.reach(location.engine, &location.addrs).await?;
        self.stream(location.engine, SegmentId::new(program, index))
            .await
    }
}

/// Reads the rest of a stream.
pub async fn read_rest(mut stream: libp2p::Stream) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await?;
    Ok(got)
}

/// A viewer that asked an engine for a segment and stopped reading: the engine's stream
/// waits on backpressure and keeps one of its `--max-streams` slots until the viewer is
/// dropped (or the engine's stall time-out of 30 s).
pub struct StalledViewer {
    _stream: libp2p::Stream,
    _console: Console,
}

impl StalledViewer {
    /// Takes a slot of `engine` (of the station whose director is `director`): asks it for
    /// the first segment of `program` it holds, below `segments`, with a console token of
    /// `issuer` (which the station must trust), and reads nothing past the reply.
    pub async fn hold(
        director: &Multiaddr,
        engine: &vodmesh_node::nodefile::PeerEntry,
        program: ProgramId,
        segments: u32,
        issuer: &Issuer,
    ) -> Result<Self> {
        let console = Console::connect(director, Some(issuer)).await?;
        console.reach(engine.peer_id, &engine.addrs).await?;
        for index in 0..segments {
            let request = console.request(SegmentId::new(program, index), 0, 0);
            match console.ask(engine.peer_id, &request).await? {
                (stream, StreamReply::Streaming { .. }) => {
                    return Ok(Self {
                        _stream: stream,
                        _console: console,
                    });
                }
                (_, StreamReply::Absent) => continue,
                (_, other) => bail!("engine {} answered {other:?}", engine.peer_id),
            }
        }
        bail!("engine {} holds no segment of the program", engine.peer_id)
    }
}

/// Waits until the station of director `node` holds every one of the `segments` segments of
/// `program` completely, asking it to `Locate` each as a console without a token (which
/// starts no miss: the segments come by a replica or another console's miss).
pub async fn wait_holds_all(
    node: &Multiaddr,
    program: ProgramId,
    segments: u32,
    timeout: Duration,
) -> Result<()> {
    wait_holds_all_as(node, program, segments, None, timeout).await
}

/// As [`wait_holds_all`], asking as a console with a token of `issuer`: a station starts a
/// miss (a copy from another) for such a console only, so the asks themselves fill it.
pub async fn wait_holds_all_as(
    node: &Multiaddr,
    program: ProgramId,
    segments: u32,
    issuer: Option<&Issuer>,
    timeout: Duration,
) -> Result<()> {
    let director = vodmesh_proto::net::peer_of(node);
    let console = Console::connect(node, issuer).await?;
    crate::wait::until("the station to hold every segment", timeout, || async {
        for index in 0..segments {
            match console.locate(program, index, false).await {
                Ok(l) if Some(l.director) == director && !l.filling => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    })
    .await
}
