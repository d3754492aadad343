//! The HTTP edge (`vodmesh-node --http`) end to end, as real `vodmesh-node` processes driven
//! through the command line: three stations (the home station, two enrolled ones), a
//! program packaged to MPEG-TS HLS by ffmpeg and ingested into the home station, a subscriber
//! logged in whose `vodmesh-console url` gives the playable URL. A plain HTTP client fetches
//! the playlist and every segment through a director, one redirect at a time: each 302 names
//! one of that station's engines at its own HTTP port (never the director), and the bytes are
//! the packaged segment files, including at a station that holds nothing (a miss, copied in
//! while the engine serves it). ffmpeg decodes the program through a director. Forged,
//! expired, other-kind and other-program tokens are 403s with their reason, beside the
//! good token's 302 and 200; a URL bound to other client addresses (`--addr`) is a 403, one
//! bound to loopback plays; byte ranges are 206 with exactly those bytes, or 416.
//!
//! Where ffmpeg is absent the test says so and passes, except under CI (`CI` set).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use vodmesh_node::nodefile::NodeFile;
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::{
    Audience, Claims, Issuer, Rights, TokenId, from_url_param, to_url_param,
};
use vodmesh_tests::cli::{console, run, subscriber};
use vodmesh_tests::http::{Once, get_once};
use vodmesh_tests::media::{decode, ingest, make_video, package_hls};
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::{require, status, wait};

/// The director's and the engines' HTTP addresses of a station, from its node.json.
struct Edge {
    director: SocketAddr,
    engines: Vec<SocketAddr>,
}

impl Edge {
    fn of(node: &NodeProcess) -> Result<Self> {
        let file = NodeFile::read(&node.data)?;
        let director = file.director.http.context("node.json: no director http")?;
        let engines = (file.engines.iter())
            .map(|e| e.http.context("node.json: an engine without http"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { director, engines })
    }

    /// `http://DIRECTOR/v/PROGRAM/FILE?token=TOKEN`.
    fn url(&self, program: &str, file: &str, token: &str) -> String {
        format!("http://{}/v/{program}/{file}?token={token}", self.director)
    }
}

/// A station of the test: `--http` on loopback, a port of its choosing.
fn station(node: Node) -> Node {
    node.ttl(10).args(&["--http", "127.0.0.1:0"])
}

/// Follows the director's redirect for `url`: the 302 must name one of `edge`'s engines
/// (never the director); returns the engine URL and what the engine answered.
fn through(edge: &Edge, url: &str) -> Result<(String, Once)> {
    let first = get_once(url, &[])?;
    ensure!(
        first.reply.status == 302,
        "GET {url}: {} {}",
        first.reply.status,
        first.reply.text()
    );
    let to = first.location.context("a 302 without Location")?;
    let authority: SocketAddr = (to.strip_prefix("http://"))
        .and_then(|r| r.split('/').next())
        .context("not an http URL")?
        .parse()?;
    ensure!(
        authority != edge.director,
        "redirected to the director: {to}"
    );
    ensure!(
        edge.engines.contains(&authority),
        "redirected to {authority}, not an engine of the station ({:?})",
        edge.engines
    );
    let answer = get_once(&to, &[])?;
    Ok((to, answer))
}

/// The segment files of a packaged HLS playlist, in order.
fn segments_of(playlist: &Path) -> Result<Vec<Vec<u8>>> {
    let dir = playlist.parent().context("no directory")?;
    let text = std::fs::read_to_string(playlist)?;
    (text.lines())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|uri| Ok(std::fs::read(dir.join(uri))?))
        .collect()
}

/// The URIs of the segments a playlist lists.
fn uris(m3u8: &str) -> Vec<String> {
    (m3u8.lines())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A URL token signed with the home station's own issuer key (`DATA/issuer.key`).
fn signed_by_home(home: &NodeProcess, program: ProgramId, expires_ms: u64) -> Result<String> {
    let seed: [u8; 32] = std::fs::read(home.data.join("issuer.key"))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("issuer.key is not 32 bytes"))?;
    let issuer = Issuer::from_secret(&seed);
    let now = vodmesh_proto::time::now_ms();
    let claims = Claims {
        issuer: issuer.public(),
        subject: libp2p::PeerId::random(),
        audience: Audience::Url,
        rights: Rights::Programs(vec![program]),
        not_before_ms: now.saturating_sub(3_600_000),
        expires_ms,
        id: TokenId::random(),
        user: None,
        roles: None,
        addr: None,
    };
    Ok(to_url_param(&issuer.sign(&claims)?))
}

/// `ffmpeg -v error -stats -i URL -f null -`: the frames decoded. It must exit 0 and report no
/// error but one: ffmpeg's HLS reader keeps its HTTP connection from one segment to the next,
/// and says so at error level when the next segment's URL (the director) is on another host
/// than where the last redirect led (an engine), before it opens a new connection.
fn decode_redirected(url: &str) -> Result<u64> {
    let run = std::process::Command::new("ffmpeg")
        .args([
            "-nostdin", "-v", "error", "-stats", "-i", url, "-f", "null", "-",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    let errors: Vec<&str> = (stderr.split(['\r', '\n']))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("frame="))
        .filter(|l| !l.contains("Cannot reuse HTTP connection for different host"))
        .collect();
    ensure!(
        run.status.success() && errors.is_empty(),
        "ffmpeg could not decode {url}: {errors:?}"
    );
    vodmesh_tests::media::ffmpeg_frames(&stderr).context("no frame count")
}

/// `GET url` must be a 403 whose one line contains `why`.
fn refused(url: &str, why: &str) -> Result<()> {
    let once = get_once(url, &[])?;
    let text = once.reply.text();
    ensure!(
        once.reply.status == 403,
        "GET {url}: {} {text}",
        once.reply.status
    );
    ensure!(text.lines().count() == 1, "one line: {text:?}");
    ensure!(text.contains(why), "{text:?} does not say {why:?}");
    Ok(())
}

#[test]
fn players_reach_every_segment_through_a_director_redirect_with_signed_urls() -> Result<()> {
    if !require::tools(&["ffmpeg"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("card.mp4");
    make_video(&video, 20)?;
    let playlist = package_hls(&video, &dir.path().join("ts"), false)?;
    let packaged = segments_of(&playlist)?;
    assert_eq!(packaged.len(), 5, "20 s in about 4 s segments");

    let home = station(Node::new(&dir.path().join("home")).engines(2).home()).start()?;
    let b = station(Node::new(&dir.path().join("b")).enrolled_with(&home)?).start()?;
    let c = station(Node::new(&dir.path().join("c")).enrolled_with(&home)?).start()?;
    for s in [&b, &c] {
        s.wait_engine_token(0)?;
    }
    let all = [home.peer(), b.peer(), c.peer()];
    wait::blocking(
        "every station to list all three",
        Duration::from_secs(60),
        || {
            for s in [&home, &b, &c] {
                let listed = status::directors(&s.addr)?;
                if !all.iter().all(|p| listed.contains(p)) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let viewer = dir.path().join("viewer");
    subscriber(&home.addr, &home.key(), &viewer, "ada")?;
    let program = ingest(&home, &playlist, "test card")?;
    let program_id: ProgramId = program.parse()?;
    let (home_edge, b_edge, c_edge) = (Edge::of(&home)?, Edge::of(&b)?, Edge::of(&c)?);

    // The URL the subscriber is given: the director's HTTP edge with a URL token.
    let url =
        run(console(None, &viewer).args(["url", "--node", &home.addr.to_string(), &program]))?;
    let url = url.trim();
    let expected = format!(
        "http://{}/v/{program}/index.m3u8?token=",
        home_edge.director
    );
    ensure!(url.starts_with(&expected), "{url}");
    let token = url
        .rsplit_once("token=")
        .map(|(_, t)| t)
        .unwrap_or_default();
    let claims = Claims::peek(&from_url_param(token)?)?;
    assert_eq!(claims.audience, Audience::Url);
    assert_eq!(claims.rights, Rights::Programs(vec![program_id]));

    // The playlist: the manifest's durations, segment URIs back at the director with the
    // token in.
    let m3u8 = get_once(url, &[])?;
    assert_eq!(m3u8.reply.status, 200, "{}", m3u8.reply.text());
    let m3u8 = m3u8.reply.text();
    assert!(m3u8.contains("#EXT-X-ENDLIST"), "{m3u8}");
    let listed = uris(&m3u8);
    assert_eq!(listed.len(), packaged.len(), "{m3u8}");
    for (i, uri) in listed.iter().enumerate() {
        assert_eq!(uri, &format!("{i}.ts?token={token}"));
    }

    // Every segment through the home station's director: its engines serve the packaged bytes.
    for (i, bytes) in packaged.iter().enumerate() {
        let (_, answer) = through(
            &home_edge,
            &home_edge.url(&program, &format!("{i}.ts"), token),
        )?;
        assert_eq!(
            answer.reply.status,
            200,
            "segment {i}: {}",
            answer.reply.text()
        );
        assert!(answer.reply.body == *bytes, "segment {i}: bytes differ");
    }

    // Station c holds nothing: its director copies the segment in from the home station and
    // sends the player to its own engine, which serves the copy as it lands.
    let (engine_url, answer) = through(&c_edge, &c_edge.url(&program, "3.ts", token))?;
    assert_eq!(answer.reply.status, 200, "{}", answer.reply.text());
    assert!(answer.reply.body == packaged[3], "the miss's bytes differ");
    c.wait_log(
        "miss: copying from the cheapest station",
        Duration::from_secs(10),
    )?;
    let again = get_once(&engine_url, &[])?;
    assert!(
        again.reply.body == packaged[3],
        "the copy, once in, differs"
    );

    // ffmpeg plays the program through station b's director (every segment a miss there).
    let frames = decode_redirected(&b_edge.url(&program, "index.m3u8", token))?;
    assert_eq!(
        frames,
        decode(&video.to_string_lossy())?,
        "frames decoded via b"
    );

    // Byte ranges at the engine: exactly those bytes, or 416 past the end.
    let whole = &packaged[1];
    let len = whole.len();
    let (engine_url, _) = through(&home_edge, &home_edge.url(&program, "1.ts", token))?;
    let part = get_once(&engine_url, &[("Range", "bytes=100-1099")])?;
    assert_eq!(part.reply.status, 206);
    assert_eq!(
        part.reply.content_range.as_deref(),
        Some(format!("bytes 100-1099/{len}").as_str())
    );
    assert!(part.reply.body == whole[100..1100]);
    let past = get_once(&engine_url, &[("Range", &format!("bytes={len}-"))])?;
    assert_eq!(past.reply.status, 416);
    assert_eq!(
        past.reply.content_range.as_deref(),
        Some(format!("bytes */{len}").as_str())
    );

    // Refusals, at the director and at the engine alike; the good token is the control.
    let mut forged = from_url_param(token)?;
    if let Some(last) = forged.last_mut() {
        *last ^= 1;
    }
    let forged = to_url_param(&forged);
    let now = vodmesh_proto::time::now_ms();
    let expired = signed_by_home(&home, program_id, now - 120_000)?;
    let other_program = signed_by_home(&home, ProgramId([9; 32]), now + 3_600_000)?;
    let stranger = {
        let issuer = Issuer::generate();
        let claims = Claims {
            issuer: issuer.public(),
            ..Claims::peek(&from_url_param(token)?)?
        };
        to_url_param(&issuer.sign(&claims)?)
    };
    let console_token = to_url_param(&std::fs::read(viewer.join("tokens/console.token"))?);
    let engine_base = engine_url
        .split_once("?token=")
        .map(|(base, _)| base.to_string())
        .unwrap_or_default();
    for (bad, why) in [
        (forged.as_str(), "forged signature"),
        (expired.as_str(), "token expired"),
        (other_program.as_str(), "not entitled to this program"),
        (stranger.as_str(), "unknown issuer"),
        (console_token.as_str(), "wrong token kind"),
        ("0OIl", "malformed token"),
    ] {
        refused(&home_edge.url(&program, "1.ts", bad), why)?;
        refused(&home_edge.url(&program, "index.m3u8", bad), why)?;
        refused(&format!("{engine_base}?token={bad}"), why)?;
    }
    refused(
        &format!("http://{}/v/{program}/1.ts", home_edge.director),
        "no token",
    )?;
    // A URL bound to other client addresses (`vodmesh-console url --addr`) is refused from
    // here; one bound to loopback plays.
    let node = home.addr.to_string();
    for (prefix, allowed) in [("10.0.0.0/8", false), ("127.0.0.0/8", true)] {
        let args = ["url", "--node", &node, "--addr", prefix, &program];
        let bound = run(console(None, &viewer).args(args))?;
        let bound = bound.trim();
        if allowed {
            let once = get_once(bound, &[])?;
            assert_eq!(once.reply.status, 200, "{prefix}: {}", once.reply.text());
        } else {
            refused(bound, "token bound to other client addresses")?;
        }
    }
    let good = get_once(&format!("{engine_base}?token={token}"), &[])?;
    assert_eq!(good.reply.status, 200);
    assert!(good.reply.body == *whole);
    let good = get_once(&home_edge.url(&program, "1.ts", token), &[])?;
    assert_eq!(good.reply.status, 302);
    // Unknown paths are 404s, not refusals.
    for path in [format!("{program}/x.ts"), "nope/1.ts".to_string()] {
        let once = get_once(
            &format!("http://{}/v/{path}?token={token}", home_edge.director),
            &[],
        )?;
        if once.reply.status != 404 {
            bail!("GET /v/{path}: {}", once.reply.status);
        }
    }
    Ok(())
}

/// A URL token for `program` signed by `issuer` (a test's own, which the stations trust).
fn url_token(issuer: &Issuer, program: ProgramId) -> Result<String> {
    let now = vodmesh_proto::time::now_ms();
    let claims = Claims {
        issuer: issuer.public(),
        subject: libp2p::PeerId::random(),
        audience: Audience::Url,
        rights: Rights::Programs(vec![program]),
        not_before_ms: now,
        expires_ms: now + 3_600_000,
        id: TokenId::random(),
        user: None,
        roles: None,
        addr: None,
    };
    Ok(to_url_param(&issuer.sign(&claims)?))
}

/// GETs `url` once, off the runtime's workers.
async fn get_once_async(url: String) -> Result<Once> {
    tokio::task::spawn_blocking(move || get_once(&url, &[])).await?
}

/// An engine taken out of service is redirected to no more: the director's next redirect for
/// a segment it held goes to another engine, which serves the same bytes, while the stopped
/// engine's port answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_is_passed_over_by_the_next_redirect() -> Result<()> {
    use vodmesh_node::events::Kind;
    use vodmesh_tests::media::random_file;
    use vodmesh_tests::swarm::{self, ingest_options, init_logging};
    use vodmesh_tools::ingest::{self, IngestOptions};

    init_logging();
    let dir = tempfile::tempdir()?;
    let players = Issuer::generate();
    let http = |c: &mut vodmesh_node::StationConfig| c.http = Some(([127, 0, 0, 1], 0).into());
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir)
        .home()
        .trusting(&players)
        .with(http)
        .start()
        .await?;
    let b = swarm::station(dir.path().join("b"))
        .engines(2)
        .trusting(&players)
        .with(http)
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    const SEGMENT: usize = 128 * 1024;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 4 * SEGMENT, 22)?;
    let mut events = b.subscribe();
    let key = home_dir.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(vodmesh_proto::time::now_ms()),
        replicas: 1,
        segment_size: SEGMENT as u64,
        ..ingest_options(&home, &key, "to lose", source)
    })
    .await?;
    wait::event(
        &mut events,
        &mut Vec::new(),
        "b's replica",
        Duration::from_secs(60),
        |e| e.program == info.program && e.peer == b.peer_id() && e.kind == Kind::ReplicaComplete,
    )
    .await?;
    let token = url_token(&players, info.program)?;
    let director = b.http_addr().context("b serves no HTTP")?;
    let engine0 = b.engines[0].http.context("b's engine 0 serves no HTTP")?;
    let segment_url =
        |i: usize| format!("http://{director}/v/{}/{i}.ts?token={token}", info.program);
    let points_at = |once: &Once, engine: SocketAddr| {
        (once.location.as_deref()).is_some_and(|l| l.starts_with(&format!("http://{engine}/")))
    };
    // A segment b's engine 0 serves (b's replica spreads over both engines).
    let mut held = None;
    for i in 0..4 {
        let once = get_once_async(segment_url(i)).await?;
        ensure!(
            once.reply.status == 302,
            "segment {i}: {}",
            once.reply.text()
        );
        if points_at(&once, engine0) {
            held = Some((i, once.location.unwrap_or_default()));
            break;
        }
    }
    let (index, at_engine0) = held.context("no segment redirected to b's engine 0")?;
    let expected = &bytes[index * SEGMENT..(index + 1) * SEGMENT];
    let served = get_once_async(at_engine0.clone()).await?;
    ensure!(served.reply.status == 200 && served.reply.body == expected);

    b.stop_engine(0).await?;
    // The director hears the engine go down; from then on it sends players elsewhere.
    let next = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait::until(
        "a redirect away from the stopped engine",
        Duration::from_secs(30),
        || {
            let (url, next) = (segment_url(index), next.clone());
            async move {
                let once = get_once_async(url).await?;
                let moved = once.reply.status == 302 && !points_at(&once, engine0);
                if moved && let Ok(mut next) = next.lock() {
                    *next = once.location;
                }
                Ok(moved)
            }
        },
    )
    .await?;
    let next = next.lock().ok().and_then(|n| n.clone());
    let elsewhere = next.context("no redirect")?;
    let served = get_once_async(elsewhere.clone()).await?;
    ensure!(
        served.reply.status == 200,
        "{elsewhere}: {}",
        served.reply.text()
    );
    ensure!(
        served.reply.body == expected,
        "bytes from {elsewhere} differ"
    );
    // The stopped engine's port serves nothing any more.
    ensure!(
        get_once_async(at_engine0).await.is_err(),
        "the stopped engine still answers"
    );
    b.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// An engine in a process of its own (`vodmesh-node engine --http`) serves HTTP as an
/// in-process one does: its director's redirect names its port, and it serves the bytes.
#[test]
fn an_engine_process_serves_http_players_through_its_director() -> Result<()> {
    use vodmesh_tests::cli::{Ingest, keygen};
    use vodmesh_tests::media::random_file;
    use vodmesh_tests::process::EngineProcess;

    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let home = station(
        Node::new(&dir.path().join("home"))
            .engines(0)
            .args(&["--engine-peer", &engine_peer])
            .home(),
    )
    .start()?;
    let issuer = home.issuer()?;
    let args = [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--trust",
        &issuer,
        "--http",
        "127.0.0.1:0",
    ];
    let _engine = EngineProcess::start_in(None, &engine_data, &home.addr, &args)?;
    wait::blocking("the engine to attach", Duration::from_secs(20), || {
        Ok(status::engines_up(&home.addr)? == vec![(engine_peer.clone(), true)])
    })?;
    const SEGMENT: usize = 256 * 1024;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 3 * SEGMENT, 5)?;
    let program = Ingest::new(&home.addr, &home.key(), "remote", &source)
        .publish_now()
        .segment_size(SEGMENT)
        .run()?;
    let token = signed_by_home(
        &home,
        program.parse()?,
        vodmesh_proto::time::now_ms() + 3_600_000,
    )?;
    let director = Edge::of(&home)?.director;
    for i in 0..3 {
        let url = format!("http://{director}/v/{program}/{i}.ts?token={token}");
        let once = get_once(&url, &[])?;
        ensure!(
            once.reply.status == 302,
            "segment {i}: {}",
            once.reply.text()
        );
        let to = once.location.context("no Location")?;
        ensure!(
            !to.starts_with(&format!("http://{director}/")),
            "redirected to the director: {to}"
        );
        let served = get_once(&to, &[])?;
        ensure!(served.reply.status == 200, "{to}: {}", served.reply.text());
        ensure!(
            served.reply.body == bytes[i * SEGMENT..(i + 1) * SEGMENT],
            "segment {i}: bytes differ"
        );
    }
    Ok(())
}
