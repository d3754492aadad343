//! The HTTP edge (`vodmesh-node --http`) beside nginx, on the same bytes: a program of
//! `files` segments ingested into a home station serving HTTP, fetched as a standard player
//! fetches it (a GET to the director, its 302 followed to the engine, the body read to its
//! end), by one client and by many at once (each with its own URL token, as each subscriber
//! has); and the same segment files served by our own nginx over plain HTTP, fetched the same
//! ways. Figures are MB/s of segment bytes: one client's rate, and the aggregate of all.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Claims, Issuer, Rights, TokenId, to_url_param};

use super::nginx::{Nginx, drain};
use super::swarm::{BenchSwarm, Shape, write_pattern};
use super::{Row, mb_s, ratio, round2, subdir};

/// Segment size of the program.
const SEGMENT: u64 = 1024 * 1024;
/// Its title, also the seed of its bytes.
const TITLE: &str = "edge";

/// Runs the section under `dir`.
pub async fn run(dir: &Path, quick: bool) -> Result<(Value, Vec<Row>)> {
    let (files, clients) = if quick { (8, 20) } else { (32, 100) };
    let bytes = files * SEGMENT;
    let mut shape = Shape::new(2);
    shape.http = Some(([127, 0, 0, 1], 0).into());
    let swarm = BenchSwarm::start(&subdir(dir, "swarm")?, shape, &[]).await?;
    let program = swarm.ingest(dir, TITLE, bytes, SEGMENT, 8_000_000).await?;
    let director = (swarm.home.http_addr()).context("the bench station serves no HTTP")?;
    let urls = |token: &str| -> Vec<String> {
        (0..files)
            .map(|i| format!("http://{director}/v/{program}/{i}.ts?token={token}"))
            .collect()
    };
    let tokens = (0..clients)
        .map(|_| url_token(&swarm.issuer))
        .collect::<Result<Vec<_>>>()?;
    let edge_one = fetch(vec![urls(&tokens[0])], bytes).await?;
    let edge_many = fetch(tokens.iter().map(|t| urls(t)).collect(), bytes).await?;
    swarm.shutdown().await;

    // The same segment files for nginx.
    let root = subdir(dir, "www")?;
    let whole = root.join("program.bin");
    write_pattern(&whole, bytes, TITLE)?;
    let data = std::fs::read(&whole)?;
    for (i, chunk) in data.chunks(SEGMENT as usize).enumerate() {
        std::fs::write(root.join(format!("{i}.ts")), chunk)?;
    }
    drop(data);
    let nginx = Nginx::serve(&subdir(dir, "nginx")?, &root).await?;
    let reference = match &nginx {
        Some(n) => {
            let base = format!("http://127.0.0.1:{}", n.http_port);
            let urls = || -> Vec<String> { (0..files).map(|i| format!("{base}/{i}.ts")).collect() };
            let one = fetch(vec![urls()], bytes).await?;
            let many = fetch((0..clients).map(|_| urls()).collect(), bytes).await?;
            Some((one, many))
        }
        None => None,
    };
    drop(nginx);

    let total = bytes * clients;
    let (one, many) = (mb_s(bytes, edge_one), mb_s(total, edge_many));
    let mut row_one = Row::new(
        "edge",
        "HTTP edge, 1 client (302 + GET per segment)",
        format!("{one:.0} MB/s"),
    );
    let mut row_many = Row::new(
        "edge",
        format!("HTTP edge, {clients} clients at once, aggregate"),
        format!("{many:.0} MB/s"),
    );
    let mut value = json!({
        "files": files,
        "segment_bytes": SEGMENT,
        "clients": clients,
        "edge_one_client_mb_s": round2(one),
        "edge_many_clients_mb_s": round2(many),
    });
    match reference {
        Some((n_one, n_many)) => {
            let (n_one, n_many) = (mb_s(bytes, n_one), mb_s(total, n_many));
            row_one = row_one.vs(
                format!("nginx HTTP, 1 client {n_one:.0} MB/s"),
                ratio(one, n_one),
            );
            row_many = row_many.vs(
                format!("nginx HTTP, {clients} clients {n_many:.0} MB/s"),
                ratio(many, n_many),
            );
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx_one_client_mb_s".into(), json!(round2(n_one)));
                obj.insert("nginx_many_clients_mb_s".into(), json!(round2(n_many)));
            }
        }
        None => {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx".into(), json!({ "skipped": "nginx not installed" }));
            }
        }
    }
    Ok((value, vec![row_one, row_many]))
}

/// A URL token of `issuer` for every program, for a subscriber of its own.
fn url_token(issuer: &Issuer) -> Result<String> {
    let claims = Claims {
        issuer: issuer.public(),
        subject: libp2p::PeerId::random(),
        audience: Audience::Url,
        rights: Rights::All,
        not_before_ms: now_ms(),
        expires_ms: now_ms() + 3_600_000,
        id: TokenId::random(),
        user: None,
        roles: None,
        addr: None,
    };
    Ok(to_url_param(&issuer.sign(&claims)?))
}

/// Each client (a thread with an HTTP/1.1 agent of its own, redirects followed) GETs its
/// `urls` in order, bodies read to their end, all clients at once; how long until the last
/// is done. Each must read `bytes`.
async fn fetch(clients: Vec<Vec<String>>, bytes: u64) -> Result<Duration> {
    tokio::task::spawn_blocking(move || -> Result<Duration> {
        let start = Instant::now();
        let threads: Vec<_> = (clients.into_iter())
            .map(|urls| {
                std::thread::spawn(move || -> Result<u64> {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(120)))
                        .build()
                        .into();
                    let mut total = 0;
                    for url in urls {
                        let mut response = agent.get(&url).call()?;
                        total += drain(response.body_mut())?;
                    }
                    Ok(total)
                })
            })
            .collect();
        for thread in threads {
            let read =
                (thread.join()).map_err(|_| anyhow::anyhow!("a bench client panicked"))??;
            if read != bytes {
                bail!("a client read {read} of {bytes} bytes");
            }
        }
        Ok(start.elapsed())
    })
    .await?
}
