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
use std::path::{Path, PathBuf};
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
use vodmesh_tests::require::Browser;
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

/// The three stations of the edge tests (the home station with two engines, two enrolled
/// ones), each `--http` on loopback with `extra` flags, a 20 s video packaged to 5 TS segments
/// and ingested, and a subscriber's URL for it from `vodmesh-console url`.
struct Swarm {
    dir: tempfile::TempDir,
    video: PathBuf,
    packaged: Vec<Vec<u8>>,
    home: NodeProcess,
    b: NodeProcess,
    c: NodeProcess,
    viewer: PathBuf,
    program: String,
    /// What `vodmesh-console url` printed.
    url: String,
    /// Its token.
    token: String,
}

impl Swarm {
    fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let video = dir.path().join("card.mp4");
        make_video(&video, 20)?;
        let playlist = package_hls(&video, &dir.path().join("ts"), false)?;
        let packaged = segments_of(&playlist)?;
        assert_eq!(packaged.len(), 5, "20 s in about 4 s segments");

        let node = |name: &str| station(Node::new(&dir.path().join(name))).args(extra);
        let home = node("home").engines(2).home().start()?;
        let b = node("b").enrolled_with(&home)?.start()?;
        let c = node("c").enrolled_with(&home)?.start()?;
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
        // The URL the subscriber is given: the director's HTTP edge with a URL token.
        let url =
            run(console(None, &viewer).args(["url", "--node", &home.addr.to_string(), &program]))?;
        let url = url.trim().to_string();
        let token = (url.rsplit_once("token=").map(|(_, t)| t.to_string())).unwrap_or_default();
        Ok(Self {
            dir,
            video,
            packaged,
            home,
            b,
            c,
            viewer,
            program,
            url,
            token,
        })
    }
}

#[test]
fn players_reach_every_segment_through_a_director_redirect_with_signed_urls() -> Result<()> {
    if !require::tools(&["ffmpeg"])? {
        return Ok(());
    }
    let Swarm {
        dir: _dir,
        video,
        packaged,
        home,
        b,
        c,
        viewer,
        program,
        url,
        token,
    } = Swarm::start(&[])?;
    let (url, token) = (url.as_str(), token.as_str());
    let program_id: ProgramId = program.parse()?;
    let (home_edge, b_edge, c_edge) = (Edge::of(&home)?, Edge::of(&b)?, Edge::of(&c)?);
    let expected = format!(
        "http://{}/v/{program}/index.m3u8?token=",
        home_edge.director
    );
    ensure!(url.starts_with(&expected), "{url}");
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
    engine_process_edge(None)
}

/// An engine process with `--tls-cert/--tls-key` behind a plain-HTTP director: the scheme
/// travels with its attachment, so the director's 302 names `https://` at the engine, which
/// serves the bytes over h2.
#[test]
fn an_engine_process_with_tls_is_redirected_to_by_https() -> Result<()> {
    if !require::tools(&["curl"])? {
        return Ok(());
    }
    let keys = tempfile::tempdir()?;
    let cert = self_signed(keys.path())?;
    engine_process_edge(Some(&cert))
}

/// The engine process test, its engine speaking TLS with `tls` (the certificate; its key
/// beside it as key.pem) when given.
fn engine_process_edge(tls: Option<&Path>) -> Result<()> {
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
    let mut args = vec![
        "--listen".to_string(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--trust".into(),
        issuer,
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(cert) = tls {
        let key = cert.with_file_name("key.pem");
        args.extend(["--tls-cert".into(), cert.to_string_lossy().into_owned()]);
        args.extend(["--tls-key".into(), key.to_string_lossy().into_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
        let expected = &bytes[i * SEGMENT..(i + 1) * SEGMENT];
        if let Some(cert) = tls {
            https_of(&to)?;
            let served = curl(&to, cert, &["--http2"])?;
            ensure!(
                (served.status, served.version.as_str()) == (200, "2"),
                "{to}"
            );
            ensure!(served.body == expected, "segment {i}: bytes differ");
            continue;
        }
        ensure!(to.starts_with("http://"), "{to}");
        let served = get_once(&to, &[])?;
        ensure!(served.reply.status == 200, "{to}: {}", served.reply.text());
        ensure!(served.reply.body == expected, "segment {i}: bytes differ");
    }
    Ok(())
}

/// A self-signed certificate for 127.0.0.1 made by openssl: `dir/cert.pem` (returned) and
/// its key `dir/key.pem`.
fn self_signed(dir: &Path) -> Result<PathBuf> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("openssl (to make a self-signed certificate)")?;
    ensure!(made.status.success(), "openssl: {made:?}");
    Ok(cert)
}

/// What `curl` got for one request: status, the HTTP version it spoke, the response headers
/// (names in lower case) and the body.
struct Curled {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curled {
    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request by curl, not following redirects, trusting `ca` (a self-signed certificate),
/// with `args` (`--http2`, `--http1.1`, `-X OPTIONS`, `-H ...`).
fn curl(url: &str, ca: &Path, args: &[&str]) -> Result<Curled> {
    let out = tempfile::tempdir()?;
    let (body, headers) = (out.path().join("body"), out.path().join("headers"));
    let run = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()?;
    ensure!(
        run.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = String::from_utf8_lossy(&run.stdout).to_string();
    let (status, version) = written.split_once(' ').context("curl -w")?;
    let headers = (std::fs::read_to_string(&headers)?.lines())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Curled {
        status: status.parse()?,
        version: version.to_string(),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    })
}

/// `https://ADDR/` of an address.
fn https_of(location: &str) -> Result<SocketAddr> {
    Ok((location.strip_prefix("https://"))
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("not an https URL: {location}"))?
        .parse()?)
}

/// With `--tls-cert/--tls-key` the director and every engine speak HTTPS, HTTP/2 by ALPN and
/// HTTP/1.1 alike: `vodmesh-console url` and the station's node.json say https, each segment's
/// 302 sends the player to an engine's https:// URL, which serves the packaged bytes exactly
/// over h2 (the version curl negotiated is checked) and over HTTP/1.1 (the control), a miss
/// at a station that holds nothing included. Every answer carries the CORS headers, and an
/// `OPTIONS` preflight allows `Range` from any origin.
#[test]
fn over_tls_every_segment_plays_through_an_https_redirect_by_http2_and_http1() -> Result<()> {
    if !require::tools(&["ffmpeg", "curl"])? {
        return Ok(());
    }
    let keys = tempfile::tempdir()?;
    let cert = self_signed(keys.path())?;
    let key = keys.path().join("key.pem");
    let (cert_arg, key_arg) = (cert.to_string_lossy(), key.to_string_lossy());
    let swarm = Swarm::start(&["--tls-cert", &cert_arg, "--tls-key", &key_arg])?;
    let (program, token) = (&swarm.program, &swarm.token);
    let (home, c) = (Edge::of(&swarm.home)?, Edge::of(&swarm.c)?);
    let file = NodeFile::read(&swarm.home.data)?;
    ensure!(
        file.director.https && file.engines.iter().all(|e| e.https),
        "node.json does not say https: {file:?}"
    );
    let expected = format!("https://{}/v/{program}/index.m3u8?token=", home.director);
    ensure!(swarm.url.starts_with(&expected), "{}", swarm.url);

    let playlist = curl(&swarm.url, &cert, &["--http2"])?;
    assert_eq!(
        playlist.status,
        200,
        "{}",
        String::from_utf8_lossy(&playlist.body)
    );
    assert_eq!(playlist.version, "2", "the director speaks h2");
    assert_eq!(playlist.header("access-control-allow-origin"), Some("*"));
    assert_eq!(uris(&String::from_utf8_lossy(&playlist.body)).len(), 5);

    // Every segment: a 302 to an engine's https:// URL, exact bytes over h2 and HTTP/1.1.
    let mut at_engine = String::new();
    for (i, bytes) in swarm.packaged.iter().enumerate() {
        let url = format!("https://{}/v/{program}/{i}.ts?token={token}", home.director);
        let found = curl(&url, &cert, &["--http2"])?;
        assert_eq!(found.status, 302, "segment {i}");
        assert_eq!(found.header("access-control-allow-origin"), Some("*"));
        let to = found.header("location").context("no Location")?.to_string();
        let engine = https_of(&to)?;
        ensure!(
            home.engines.contains(&engine),
            "segment {i} redirected to {to}, not to an engine of the station ({:?})",
            home.engines
        );
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let served = curl(&to, &cert, &[flag])?;
            assert_eq!(served.status, 200, "segment {i} {flag}");
            assert_eq!(served.version, version, "segment {i} {flag}");
            assert!(served.body == *bytes, "segment {i} {flag}: bytes differ");
        }
        at_engine = to;
    }
    // A range over h2 at the engine.
    let part = curl(
        &at_engine,
        &cert,
        &["--http2", "-H", "Range: bytes=100-1099"],
    )?;
    assert_eq!((part.status, part.version.as_str()), (206, "2"));
    assert!(part.body == swarm.packaged[4][100..1100]);
    assert_eq!(part.header("access-control-allow-origin"), Some("*"));
    let exposed = part
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for name in ["Content-Length", "Content-Range", "Accept-Ranges"] {
        ensure!(exposed.contains(name), "{name} not exposed: {exposed:?}");
    }
    // Preflights, at the director and at an engine; an engine's refusal is readable too.
    for url in [&swarm.url, &at_engine] {
        let pre = curl(
            url,
            &cert,
            &[
                "-X",
                "OPTIONS",
                "-H",
                "Origin: https://player.example",
                "-H",
                "Access-Control-Request-Method: GET",
                "-H",
                "Access-Control-Request-Headers: range",
            ],
        )?;
        assert_eq!(pre.status, 204, "OPTIONS {url}");
        assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
        let allowed = pre
            .header("access-control-allow-headers")
            .unwrap_or_default();
        ensure!(allowed.eq_ignore_ascii_case("range"), "{allowed:?}");
    }
    let base = at_engine.split_once("?token=").map_or("", |(b, _)| b);
    let refused = curl(&format!("{base}?token=0OIl"), &cert, &[])?;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    // A path the edge does not serve is a 404 a page's script can read, at both (axum's
    // own 404 passes through the CORS layer too).
    for url in [&swarm.url, &at_engine] {
        let root = url.split("/v/").next().unwrap_or_default();
        let lost = curl(&format!("{root}/nothing/here"), &cert, &[])?;
        assert_eq!(lost.status, 404, "{root}");
        assert_eq!(
            lost.header("access-control-allow-origin"),
            Some("*"),
            "{root}"
        );
    }

    // A miss over https: station c copies the segment in and its engine serves it.
    let url = format!("https://{}/v/{program}/2.ts?token={token}", c.director);
    let found = curl(&url, &cert, &["--http2"])?;
    assert_eq!(found.status, 302);
    let to = found.header("location").context("no Location")?.to_string();
    ensure!(c.engines.contains(&https_of(&to)?), "{to}");
    let served = curl(&to, &cert, &["--http2"])?;
    assert_eq!((served.status, served.version.as_str()), (200, "2"));
    assert!(served.body == swarm.packaged[2], "the miss's bytes differ");
    swarm.c.wait_log(
        "miss: copying from the cheapest station",
        Duration::from_secs(10),
    )?;

    // Plain HTTP is not spoken on an HTTPS edge.
    let plain = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!(
            "http://{}/v/{program}/index.m3u8?token={token}",
            home.director
        ))
        .output()?;
    ensure!(
        String::from_utf8_lossy(&plain.stdout) != "200",
        "the HTTPS edge answered plain HTTP"
    );
    Ok(())
}

/// `s` percent-encoded for a query parameter's value.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// hls.js in headless Chromium plays a program from a page on another origin
/// (tests/browser/edge.html, a file:// page: CORS is what lets it read the edge), through
/// the director of station b, which holds nothing: every segment is a miss there, copied in
/// from the home station while b's engine serves it. Every segment response the browser got
/// came from one of b's engines by a redirect from b's director for the same segment, and
/// the video played past 5 s with no media error.
#[test]
fn hls_js_in_chromium_plays_through_a_director_from_another_origin() -> Result<()> {
    if !require::tools(&["ffmpeg"])? {
        return Ok(());
    }
    let Some(browser) = Browser::find()? else {
        return Ok(());
    };
    let swarm = Swarm::start(&[])?;
    let (program, token) = (&swarm.program, &swarm.token);
    let b = Edge::of(&swarm.b)?;
    let src = b.url(program, "index.m3u8", token);
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/edge.html");
    let page = format!("file://{}?src={}", page.display(), query_value(&src));
    // Fails unless the browser played past 5 s without an error.
    let (result, _) = browser.run(
        "play.js",
        &page,
        "edge-chromium.png",
        &swarm.dir.path().join("chromium-profile"),
        &[],
    )?;
    let at = result["currentTime"].as_f64().unwrap_or(0.0);
    assert!(at > 5.0, "video.currentTime = {at}: {result}");
    assert!(result["error"].is_null(), "{result}");

    let responses = result["responses"].as_array().context("no responses")?;
    let prefix = format!("/v/{program}/");
    let mut served = std::collections::BTreeSet::new();
    for r in responses {
        let url = r["url"].as_str().unwrap_or_default();
        let status = r["status"].as_u64().unwrap_or_default();
        let Some(rest) = url.strip_prefix("http://") else {
            continue; // the page and hls.js, from file://
        };
        let (authority, path) = rest.split_once('/').context("a URL without a path")?;
        let path = format!("/{path}");
        let Some(file) = path.strip_prefix(&prefix).and_then(|f| f.split('?').next()) else {
            bail!("the browser fetched {url}");
        };
        if file.ends_with(".m3u8") {
            ensure!(
                authority == b.director.to_string() && status == 200,
                "playlist {url}: {status}"
            );
            continue;
        }
        ensure!(file.ends_with(".ts"), "the browser fetched {url}");
        let authority: SocketAddr = authority.parse()?;
        if authority == b.director {
            ensure!(status == 302, "the director answered {url} with {status}");
            continue;
        }
        ensure!(
            b.engines.contains(&authority),
            "{url} from {authority}, neither b's director nor one of its engines"
        );
        ensure!(status == 200 || status == 206, "{url}: {status}");
        let from = r["redirectedFrom"].as_str().unwrap_or_default();
        ensure!(
            from == b.url(program, file, token),
            "{url} was not reached by the director's redirect for {file} (from {from:?})"
        );
        served.insert(file.to_string());
    }
    ensure!(
        served.len() >= 2,
        "segments served by engines through redirects: {served:?}"
    );
    // b held nothing: its engine served copies being filled by misses.
    swarm.b.wait_log(
        "miss: copying from the cheapest station",
        Duration::from_secs(10),
    )?;
    eprintln!("hls.js in Chromium played {at} s; segments via redirects: {served:?}");
    Ok(())
}

/// `--tls-cert/--tls-key` that cannot serve stop the start with one line and no panic: a
/// missing file, a file without a certificate or without a key, a key of another certificate;
/// and clap refuses them without `--http` or one without the other.
#[test]
fn a_bad_certificate_or_key_is_one_line_at_start() -> Result<()> {
    use std::ffi::OsString;
    let dir = tempfile::tempdir()?;
    let mkdir = |name: &str| -> Result<PathBuf> {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let good = self_signed(&mkdir("good")?)?;
    let good_key = good.with_file_name("key.pem");
    let other = self_signed(&mkdir("other")?)?;
    let other_key = other.with_file_name("key.pem");
    let missing = dir.path().join("missing.pem");
    let node = |args: &[OsString]| -> Result<(i32, String)> {
        let out = std::process::Command::new(vodmesh_tests::cli::bin("vodmesh-node"))
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let flag = |name: &str, value: &Path| -> Vec<OsString> {
        vec![name.into(), value.as_os_str().to_owned()]
    };
    let http: Vec<OsString> = vec!["--http".into(), "127.0.0.1:0".into()];
    for (cert, key, says) in [
        (&missing, &good_key, "cannot read the TLS certificate"),
        (&good_key, &good_key, "no PEM certificate in"),
        (&good, &good, "no PEM private key in"),
        (&good, &other_key, "does not fit the certificate"),
    ] {
        let args = [
            http.clone(),
            flag("--tls-cert", cert),
            flag("--tls-key", key),
        ]
        .concat();
        let (code, stderr) = node(&args)?;
        ensure!(code == 1, "{code}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(
            lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains(says),
            "expected one line saying {says:?}: {stderr:?}"
        );
    }
    // clap: --tls-* only with --http, and the two together.
    let (cert, key) = (flag("--tls-cert", &good), flag("--tls-key", &good_key));
    for args in [
        [cert.clone(), key.clone()].concat(),
        [http.clone(), cert].concat(),
        [http, key].concat(),
    ] {
        let (code, stderr) = node(&args)?;
        ensure!(
            code == 2 && stderr.contains("required arguments were not provided"),
            "{args:?}: {code} {stderr}"
        );
    }
    Ok(())
}
