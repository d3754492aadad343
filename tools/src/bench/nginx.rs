//! nginx as the bench's yardstick: our own nginx on 127.0.0.1 (its config and a self-signed
//! certificate of its own), serving bytes over HTTPS (TLS 1.3) and plain HTTP, fetched by a
//! client in the bench. Used when `nginx` is installed; the caller skips its rows otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::swarm::write_pattern;
use super::{mb_s, own_cpu_time, subdir, threads_cpu_time};

/// What one nginx run measured, in MB/s.
pub(crate) struct Figures {
    /// `files` files of `segment` bytes over HTTPS, one after the other on one kept-alive
    /// connection (its handshake not timed).
    pub(crate) https: f64,
    /// The same over plain HTTP (sendfile).
    pub(crate) http: f64,
    /// One HTTPS download of one file holding the program's bytes, on a fresh connection
    /// (connect and handshake timed, as a player's download would be).
    pub(crate) https_one: f64,
    /// The CPU that download took: nginx's worker (`None` if it could not be read), and the
    /// client (this process).
    pub(crate) https_one_cpu: (Option<Duration>, Duration),
}

/// An nginx of our own on 127.0.0.1, stopped when dropped.
struct NginxProcess(Child);

impl Drop for NginxProcess {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits. A SIGKILL alone would leave the
        // workers running, orphaned.
        let stopped = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Our own nginx on 127.0.0.1, serving `root` over plain HTTP and HTTPS; stopped when
/// dropped.
pub(crate) struct Nginx {
    process: NginxProcess,
    /// Its plain HTTP port.
    pub(crate) http_port: u16,
    /// Its HTTPS port (TLS 1.3, a self-signed certificate).
    pub(crate) https_port: u16,
}

impl Nginx {
    /// Starts nginx (`bin`) with its config, certificate and logs under `dir`, serving
    /// `root`; returns once both ports answer.
    async fn start(bin: &Path, dir: &Path, root: &Path) -> Result<Self> {
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
                 events {{ worker_connections 1024; }}\n\
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
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let process = NginxProcess(child);
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
        Ok(Self {
            process,
            http_port,
            https_port,
        })
    }

    /// Serves `root` from an nginx with its files under `dir`; `Ok(None)` when nginx is not
    /// installed.
    pub(crate) async fn serve(dir: &Path, root: &Path) -> Result<Option<Self>> {
        match which("nginx") {
            Some(bin) => Ok(Some(Self::start(&bin, dir, root).await?)),
            None => Ok(None),
        }
    }
}

/// Serves `bytes` as `segment`-sized files, and `program` (`(bytes, seed)` of
/// [`write_pattern`]) as one file, from our own nginx under `dir`; fetches them. `Ok(None)`
/// when nginx is not installed.
pub(crate) async fn run(
    dir: &Path,
    bytes: u64,
    segment: u64,
    program: (u64, &str),
) -> Result<Option<Figures>> {
    let Some(bin) = which("nginx") else {
        return Ok(None);
    };
    let root = subdir(dir, "www")?;
    let files = bytes.div_ceil(segment);
    for i in 0..files {
        write_pattern(
            &root.join(format!("{i}.bin")),
            segment,
            &format!("nginx-{i}"),
        )?;
    }
    write_pattern(&root.join("program.bin"), program.0, program.1)?;
    let nginx = Nginx::start(&bin, dir, &root).await?;
    let https_port = nginx.https_port;
    let http_port = nginx.http_port;
    let https_base = format!("https://127.0.0.1:{https_port}");
    let https = fetch_all(https_base.clone(), files, segment).await?;
    let http = fetch_all(format!("http://127.0.0.1:{http_port}"), files, segment).await?;
    let master = nginx.process.0.id();
    let (one, https_one_cpu) =
        fetch_one(format!("{https_base}/program.bin"), program.0, master).await?;
    Ok(Some(Figures {
        https: mb_s(files * segment, https),
        http: mb_s(files * segment, http),
        https_one: mb_s(program.0, one),
        https_one_cpu,
    }))
}

/// An agent that accepts nginx's self-signed certificate.
fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    ureq::Agent::config_builder().tls_config(tls).build().into()
}

/// Reads `body` to its end; returns its length.
pub(crate) fn drain(body: &mut ureq::Body) -> Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 256 * 1024];
    let mut reader = body.as_reader();
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Fetches `/0.bin` .. `/<files-1>.bin` from `base` over one kept-alive connection.
async fn fetch_all(base: String, files: u64, segment: u64) -> Result<Duration> {
    tokio::task::spawn_blocking(move || -> Result<Duration> {
        let agent = agent();
        // One request first so the connection (and TLS handshake) is not timed.
        let mut first = agent.get(format!("{base}/0.bin")).call()?;
        drain(first.body_mut())?;
        let start = Instant::now();
        let mut total = 0u64;
        for i in 0..files {
            let mut resp = agent.get(format!("{base}/{i}.bin")).call()?;
            total += drain(resp.body_mut())?;
        }
        if total != files * segment {
            bail!("nginx served {total} of {} bytes", files * segment);
        }
        Ok(start.elapsed())
    })
    .await?
}

/// Downloads `url` (`bytes` long) once on a fresh connection: connect to last byte. Returns
/// the time and the CPU taken meanwhile by the workers of the nginx whose master is `master`
/// and by this process (the client).
async fn fetch_one(
    url: String,
    bytes: u64,
    master: u32,
) -> Result<(Duration, (Option<Duration>, Duration))> {
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let workers = || -> Option<Duration> {
            let children = format!("/proc/{master}/task/{master}/children");
            let pids = std::fs::read_to_string(children).ok()?;
            (pids.split_whitespace())
                .map(|pid| threads_cpu_time(pid.parse().ok()?))
                .sum()
        };
        let (nginx, client) = (workers(), own_cpu_time());
        let start = Instant::now();
        let mut resp = agent.get(&url).call()?;
        let total = drain(resp.body_mut())?;
        let elapsed = start.elapsed();
        let client = own_cpu_time().saturating_sub(client);
        let nginx = workers()
            .zip(nginx)
            .map(|(after, before)| after.saturating_sub(before));
        if total != bytes {
            bail!("nginx served {total} of {bytes} bytes of {url}");
        }
        Ok((elapsed, (nginx, client)))
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
