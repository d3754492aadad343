//! What a test needs from the machine (ffmpeg, Chromium, root for network namespaces and
//! mounts) and the one rule for when it is missing: outside CI the test is skipped with a
//! printed `SKIPPED:` line that says why; under CI (`CI=true`: `.ci/run` sets it and installs
//! every tool) a missing prerequisite fails the test, so that no test passes there without
//! running. Only what CI cannot be asked for either (root) skips everywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Whether this runs under CI: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// A prerequisite `why` is missing: under CI an error, elsewhere a printed `SKIPPED: why`
/// and `Ok(())`, for the test to return at once.
pub fn skip(why: &str) -> Result<()> {
    if in_ci() {
        bail!("{why}: under CI this test must run (.ci/run installs what it needs)");
    }
    println!("SKIPPED: {why}");
    Ok(())
}

/// A prerequisite `why` is missing that CI cannot provide either (root): a printed
/// `SKIPPED: why`, under CI too.
pub fn skip_everywhere(why: &str) {
    println!("SKIPPED: {why}");
}

/// Whether `tool` runs here (`-version` for ffmpeg's family, `--version` for the rest).
pub fn installed(tool: &str) -> bool {
    let flag = if tool.starts_with("ff") {
        "-version"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Ok(true)` when every one of `tools` is installed; otherwise [`skip`]: `Ok(false)` (the
/// test returns) or, under CI, an error.
pub fn tools(tools: &[&str]) -> Result<bool> {
    let absent: Vec<&str> = tools.iter().copied().filter(|t| !installed(t)).collect();
    if absent.is_empty() {
        return Ok(true);
    }
    skip(&format!(
        "{absent:?} not installed (apt-get install ffmpeg chromium nodejs npm python3)"
    ))?;
    Ok(false)
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_string();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Headless Chromium driven by node and playwright-core (`tests/browser`), for the tests that
/// load a page in a real browser.
pub struct Browser {
    chromium: String,
    scripts: PathBuf,
}

impl Browser {
    /// The browser (`$CHROMIUM`, default `/usr/bin/chromium`); `None` after [`skip`] where
    /// node, Chromium or `tests/browser/node_modules/playwright-core` is absent.
    pub fn find() -> Result<Option<Self>> {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
        let playwright = scripts.join("node_modules/playwright-core");
        if installed("node") && Path::new(&chromium).exists() && playwright.exists() {
            return Ok(Some(Self { chromium, scripts }));
        }
        skip(&format!(
            "node, Chromium ({chromium}) or playwright-core ({}) is absent: run \
             `apt-get install nodejs npm chromium` and `npm ci` in tests/browser",
            playwright.display()
        ))?;
        Ok(None)
    }

    /// Runs `node tests/browser/SCRIPT URL SCREENSHOT PROFILE ARGS...` with a fresh profile
    /// under `profile`, the screenshot going to `target/test-artifacts/SHOT`; returns the
    /// JSON the script printed last and the screenshot's path. Fails with the script's
    /// output unless it exits 0.
    pub fn run(
        &self,
        script: &str,
        url: &str,
        shot: &str,
        profile: &Path,
        args: &[String],
    ) -> Result<(serde_json::Value, PathBuf)> {
        // target/test-artifacts/, beside the binaries' profile directory.
        let artifacts = crate::cli::bin("vodmesh")
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("test-artifacts"))
            .context("no target directory")?;
        std::fs::create_dir_all(&artifacts)?;
        let screenshot = artifacts.join(shot);
        let _ = std::fs::remove_file(&screenshot);
        let out = Command::new("node")
            .arg(self.scripts.join(script))
            .arg(url)
            .arg(&screenshot)
            .arg(profile)
            .args(args)
            .env("CHROMIUM", &self.chromium)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{script} failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = stdout
            .lines()
            .last()
            .context("the script printed nothing")?;
        Ok((serde_json::from_str(last)?, screenshot))
    }
}
