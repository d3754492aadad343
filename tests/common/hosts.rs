//! Test hosts as network namespaces, made by `tests/hosts.sh`: hosts on one bridge at
//! 10.77.0.i, links shaped and cut, a host put behind a NAT.
//!
//! They need root and iproute2 (and nftables for the NAT). Without them a test is skipped
//! with a message; under CI (`CI=true`), as root with iproute2, failing to make them fails
//! the test, so that the multi-host tests cannot pass there without running.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Hosts made by `tests/hosts.sh` for one test, removed when dropped.
pub struct Hosts {
    prefix: String,
}

fn script(args: &[&str]) -> Result<Output> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hosts.sh");
    Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .context("running tests/hosts.sh")
}

/// Whether this runs under CI (`.ci/run` is started with `CI=true`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_string();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Whether `tool` runs here.
fn has(tool: &str, version_flag: &str) -> bool {
    Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A missing prerequisite: `Ok(None)` (skip, with a message) where the machine cannot have
/// it, an error under CI where `.ci/run` installs it.
fn unavailable<T>(why: &str, ci_has_it: bool) -> Result<Option<T>> {
    if ci_has_it && in_ci() {
        bail!("{why} (under CI, as root with iproute2, this must work)");
    }
    println!("SKIPPED: {why}");
    Ok(None)
}

impl Hosts {
    /// `n` hosts (10.77.0.1..n) on one bridge; `None` when namespaces cannot be made here
    /// (not root, no `ip`; or, outside CI, the kernel or sandbox refuses them).
    pub fn up(n: u8) -> Result<Option<Self>> {
        if !is_root() {
            return unavailable("not root: network namespaces need root", false);
        }
        if !has("ip", "-V") {
            return unavailable("no `ip` (iproute2): cannot make network namespaces", false);
        }
        let prefix = format!("vm{}", std::process::id() % 100_000);
        let out = script(&["up", &prefix, &n.to_string()])?;
        if !out.status.success() {
            let _ = script(&["down", &prefix]);
            let why = format!(
                "tests/hosts.sh up: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return unavailable(&why, true);
        }
        Ok(Some(Self { prefix }))
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: u8) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec![args[0], &self.prefix];
        all.extend_from_slice(&args[1..]);
        script(&all)
    }

    /// Shapes what host `i` sends; false when the kernel has no netem (rate only).
    pub fn shape(&self, i: u8, rate: &str, delay: &str, loss: &str) -> Result<bool> {
        let out = self.run(&["shape", &i.to_string(), rate, delay, loss])?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => {
                println!("NOTE: {}", String::from_utf8_lossy(&out.stderr).trim());
                Ok(false)
            }
            _ => bail!("shape: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Cuts (`true`) or restores host `i`'s link.
    pub fn cut(&self, i: u8, cut: bool) -> Result<()> {
        let out = self.run(&[if cut { "cut" } else { "heal" }, &i.to_string()])?;
        if !out.status.success() {
            bail!("cut: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Puts host `i` behind a NAT on the bridge host: its interface gets a private address
    /// (10.78.i.1) no other host can reach, and the others reach it at its public address
    /// 10.79.0.i, every port forwarded, an address on no interface of host `i`. Returns
    /// (public, private) address; `None` (skipped) without nftables outside CI.
    pub fn behind_nat(&self, i: u8) -> Result<Option<(String, String)>> {
        if !has("nft", "--version") {
            return unavailable("no `nft` (nftables): cannot make a NAT", true);
        }
        let out = self.run(&["nat", &i.to_string()])?;
        if !out.status.success() {
            bail!("nat: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Some((format!("10.79.0.{i}"), format!("10.78.{i}.1"))))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = script(&["down", &self.prefix]);
    }
}
