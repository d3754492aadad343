//! Test hosts as network namespaces, made by `tests/hosts.sh`: hosts on one bridge at
//! 10.77.0.i, links shaped and cut, a host put behind a NAT.
//!
//! They need root and iproute2 (and nftables for the NAT). Without root or `ip` a test is
//! skipped with a message; under CI (`CI=true`), as root with iproute2, failing to make them
//! (or a NAT without nftables, which `.ci/run` installs) fails the test ([`require::skip`]),
//! so that the multi-host tests cannot pass there without running.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::require;

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

/// Whether `tool` runs here.
fn has(tool: &str, version_flag: &str) -> bool {
    Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Hosts {
    /// `n` hosts (10.77.0.1..n) on one bridge; `None` when namespaces cannot be made here
    /// (not root, no `ip`; or, outside CI, the kernel or sandbox refuses them).
    pub fn up(n: u8) -> Result<Option<Self>> {
        if !require::is_root() {
            require::skip_everywhere("not root: network namespaces need root");
            return Ok(None);
        }
        if !has("ip", "-V") {
            require::skip_everywhere("no `ip` (iproute2): cannot make network namespaces");
            return Ok(None);
        }
        let prefix = format!("vm{}", std::process::id() % 100_000);
        let out = script(&["up", &prefix, &n.to_string()])?;
        if !out.status.success() {
            let _ = script(&["down", &prefix]);
            let why = format!(
                "tests/hosts.sh up: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            require::skip(&why)?;
            return Ok(None);
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

    /// Removes host `i`'s shaping.
    pub fn unshape(&self, i: u8) -> Result<()> {
        let out = self.run(&["unshape", &i.to_string()])?;
        if !out.status.success() {
            bail!("unshape: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
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
            require::skip("no `nft` (nftables): cannot make a NAT")?;
            return Ok(None);
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
