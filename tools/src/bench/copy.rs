//! The `copy` section: engine -> engine copies of a program in 4 MiB segments through real
//! stations (a `Replicate` to an enrolled station: locate, fetch over `/vodmesh/copy/1`,
//! verify, store, commit, table, as in distribution) over TCP + noise + yamux, beside:
//!
//! - the transport ceiling: one raw libp2p stream moving the same bytes from memory, with the
//!   same swarm configuration (TCP + noise + yamux, or QUIC);
//! - nginx serving the same segment files over HTTPS and plain HTTP on loopback, fetched one
//!   after the other over a kept-alive connection by a client in the bench (when `nginx` is
//!   installed; its rows are skipped with a note otherwise).
//!
//! libp2p TLS is not among vodmesh's transports (noise only), so it has no row.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use serde_json::{Value, json};
use vodmesh_node::events::{self, Kind};
use vodmesh_proto::net::build_swarm;

use super::swarm::{BenchSwarm, Shape, write_pattern};
use super::{Row, mb_s, ratio, subdir};

const SEGMENT: u64 = 4 * 1024 * 1024;
const RAW: StreamProtocol = StreamProtocol::new("/vodmesh-bench/raw/1");

/// Runs the section under `dir`.
pub async fn run(dir: &Path, quick: bool) -> Result<(Value, Vec<Row>)> {
    let mib: u64 = if quick { 32 } else { 256 };
    let bytes = mib * 1024 * 1024;
    let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse()?;

    let raw_tcp = mb_s(bytes, raw_stream(tcp.clone(), bytes).await?);
    let raw_quic = mb_s(bytes, raw_stream(quic, bytes).await?);
    let copy_tcp = mb_s(
        bytes,
        replicate(&subdir(dir, "tcp")?, vec![tcp], bytes).await?,
    );
    let nginx = match nginx(&subdir(dir, "nginx")?, bytes).await {
        Ok(n) => n,
        Err(e) => Nginx::Skipped(format!("{e:#}")),
    };

    let mut rows = vec![
        Row::new(
            "copy",
            "engine->engine copy, TCP+noise",
            format!("{copy_tcp:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream TCP {raw_tcp:.0} MB/s"),
            ratio(copy_tcp, raw_tcp),
        ),
        Row::new(
            "copy",
            "raw libp2p stream, QUIC",
            format!("{raw_quic:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream TCP {raw_tcp:.0} MB/s"),
            ratio(raw_quic, raw_tcp),
        ),
    ];
    let mut value = json!({
        "bytes": bytes,
        "segment_bytes": SEGMENT,
        "copy_tcp_noise_mb_s": copy_tcp,
        "raw_libp2p_stream_tcp_mb_s": raw_tcp,
        "raw_libp2p_stream_quic_mb_s": raw_quic,
        "copy_vs_ceiling_tcp": ratio(copy_tcp, raw_tcp),
        "quic_vs_tcp_ceiling": ratio(raw_quic, raw_tcp),
        "quic_copy": "not measured: a station's director and engines share --listen, and the registry runs over TCP, so stations cannot be made to copy over QUIC alone",
        "tls": "not measured: vodmesh's transports are TCP+noise and QUIC (libp2p-tls is not built in)",
        "setup": "home station (1 engine) -> enrolled station (1 engine): ingest with 1 replica; timed from the content manager's Replicate to the target's ReplicaComplete",
    });
    match nginx {
        Nginx::Ran { https, http } => {
            rows.push(
                Row::new(
                    "copy",
                    "engine->engine copy, TCP+noise",
                    format!("{copy_tcp:.0} MB/s"),
                )
                .vs(
                    format!("nginx HTTPS {https:.0} MB/s"),
                    ratio(copy_tcp, https),
                ),
            );
            rows.push(
                Row::new("copy", "nginx HTTPS (TLS 1.3)", format!("{https:.0} MB/s"))
                    .vs(format!("nginx HTTP {http:.0} MB/s"), ratio(https, http)),
            );
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx_https_mb_s".into(), json!(https));
                obj.insert("nginx_http_mb_s".into(), json!(http));
                obj.insert("copy_vs_nginx_https".into(), json!(ratio(copy_tcp, https)));
                obj.insert("copy_vs_nginx_http".into(), json!(ratio(copy_tcp, http)));
            }
        }
        Nginx::Skipped(why) => {
            rows.push(Row::new(
                "copy",
                "nginx HTTPS/HTTP",
                format!("skipped: {why}"),
            ));
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx".into(), json!({ "skipped": why }));
            }
        }
    }
    Ok((value, rows))
}

/// Moves `bytes` from memory over one libp2p stream between two fresh swarms; returns the
/// time from the first write to the receiver's acknowledgement of the last byte.
async fn raw_stream(listen: Multiaddr, bytes: u64) -> Result<Duration> {
    let mut server = build_swarm(Keypair::generate_ed25519(), |_| {
        vodmesh_proto::net::streams::Behaviour::new()
    })?;
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
    let mut client = build_swarm(Keypair::generate_ed25519(), |_| {
        vodmesh_proto::net::streams::Behaviour::new()
    })?;
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
        let start = Instant::now();
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
        let got = reader.await??;
        if got != bytes {
            bail!("raw stream moved {got} of {bytes} bytes");
        }
        Ok(elapsed)
    }
    .await;
    server_task.abort();
    client_task.abort();
    result
}

/// A home station and one enrolled station listening on `listen`; `bytes` ingested into the
/// home, then replicated to the other. Returns the replication time.
async fn replicate(dir: &Path, listen: Vec<Multiaddr>, bytes: u64) -> Result<Duration> {
    let shape = Shape { engines: 1, listen };
    let swarm = BenchSwarm::start(dir, shape.clone(), &[shape]).await?;
    let result = async {
        let target = swarm.others[0].peer_id();
        let home = swarm.home.peer_id();
        let sink = events::sink();
        swarm.home.send_events_to(&sink);
        swarm.others[0].send_events_to(&sink);
        let mut log = sink.subscribe();
        let key = swarm.home_dir.join("identity.key");
        // The content manager sends `Replicate` once the ingest commits (claim 12); the copy
        // is timed from that message to the target's last segment tabled.
        let ingest = super::swarm::ingest_into(
            swarm.home.addr(),
            &key,
            dir,
            ("copy", 1),
            bytes,
            SEGMENT,
            8_000_000,
        );
        tokio::pin!(ingest);
        let mut program = None;
        let mut start = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120 + bytes / 4_000_000);
        loop {
            let event = tokio::select! {
                done = &mut ingest, if program.is_none() => {
                    program = Some(done?);
                    continue;
                }
                e = tokio::time::timeout_at(deadline, log.recv()) => e,
            };
            let e = match event {
                Err(_) => bail!("the copy did not complete in time (see the station logs)"),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(e)) => bail!("event bus: {e}"),
                Ok(Ok(e)) => e,
            };
            if e.peer == home && e.kind == (Kind::ReplicateSent { target }) {
                start = Some((e.program, Instant::now()));
            }
            if let Some((p, t)) = start
                && e.program == p
                && e.peer == target
                && e.kind == Kind::ReplicaComplete
            {
                let elapsed = t.elapsed();
                if program.is_none() {
                    (&mut ingest).await?;
                }
                return Ok(elapsed);
            }
        }
    }
    .await;
    swarm.shutdown().await;
    result
}

enum Nginx {
    Ran { https: f64, http: f64 },
    Skipped(String),
}

/// An nginx of our own on 127.0.0.1, killed when dropped.
struct NginxProcess(Child);

impl Drop for NginxProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Serves `bytes` as 4 MiB files from our own nginx and fetches them over HTTPS and HTTP.
async fn nginx(dir: &Path, bytes: u64) -> Result<Nginx> {
    let Some(bin) = which("nginx") else {
        return Ok(Nginx::Skipped("nginx is not installed".into()));
    };
    let root = subdir(dir, "www")?;
    let files = bytes.div_ceil(SEGMENT);
    for i in 0..files {
        write_pattern(
            &root.join(format!("{i}.bin")),
            SEGMENT,
            &format!("nginx-{i}"),
        )?;
    }
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl for nginx's self-signed certificate")?;
    if !out.status.success() {
        bail!(
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (http_port, https_port) = (free_port()?, free_port()?);
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nuser root root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
               fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
               server {{ listen 127.0.0.1:{http_port}; root {root}; }}\n\
               server {{ listen 127.0.0.1:{https_port} ssl; root {root};\n\
                 ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.3; }}\n}}\n",
            root = root.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )?;
    let child = Command::new(&bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let _nginx = NginxProcess(child);
    // Wait until both ports answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [http_port, https_port] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx did not listen: {}", log.trim());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let https = fetch_all(format!("https://127.0.0.1:{https_port}"), files).await?;
    let http = fetch_all(format!("http://127.0.0.1:{http_port}"), files).await?;
    Ok(Nginx::Ran {
        https: mb_s(files * SEGMENT, https),
        http: mb_s(files * SEGMENT, http),
    })
}

/// Fetches `/0.bin` .. `/<files-1>.bin` from `base` over one kept-alive connection.
async fn fetch_all(base: String, files: u64) -> Result<Duration> {
    tokio::task::spawn_blocking(move || -> Result<Duration> {
        use std::io::Read;
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(true)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
        // One request first so the connection (and TLS handshake) is not timed.
        let mut first = agent.get(format!("{base}/0.bin")).call()?;
        std::io::copy(&mut first.body_mut().as_reader(), &mut std::io::sink())?;
        let mut buf = vec![0u8; 256 * 1024];
        let start = Instant::now();
        let mut total = 0u64;
        for i in 0..files {
            let mut resp = agent.get(format!("{base}/{i}.bin")).call()?;
            let mut body = resp.body_mut().as_reader();
            loop {
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        if total != files * SEGMENT {
            bail!("nginx served {total} of {} bytes", files * SEGMENT);
        }
        Ok(start.elapsed())
    })
    .await?
}

/// The full path of `name` on `PATH` (also /usr/sbin, where Debian puts nginx).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
