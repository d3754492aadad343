//! Build script of the three binaries (`build = "../build/git_commit.rs"` in node, tools and
//! console-client): sets `VODMESH_GIT_COMMIT` for `--version` (`vodmesh_client::version!`)
//! to the short commit of the checkout, `unknown` outside one (a source tarball, a docker
//! build without .git), or the value of the `VODMESH_GIT_COMMIT` variable when it is set.
//!
//! Cargo must not rebuild every time: the script runs again only when HEAD moves (the file
//! .git/HEAD, and the ref it points to, or packed-refs where refs are packed). Each path is
//! named only when it exists: cargo treats a missing `rerun-if-changed` file as changed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VODMESH_GIT_COMMIT");
    // Named so that cargo does not fall back to rerunning on any change in the package.
    println!("cargo:rerun-if-changed=../build/git_commit.rs");
    let commit = match std::env::var("VODMESH_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => {
            for path in watched() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=VODMESH_GIT_COMMIT={commit}");
}

/// The files whose change moves HEAD: HEAD itself, the branch it points to, packed-refs.
/// Asked of git, so that a worktree (whose HEAD is in the main repository's
/// .git/worktrees/NAME and whose refs are in the common directory) is watched correctly.
fn watched() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut push = |name: &str| {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            let path = absolute(&path);
            if path.exists() {
                paths.push(path);
            }
        }
    };
    push("HEAD");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        push(&branch);
    }
    push("packed-refs");
    paths
}

/// `git ARGS` in the package's directory: its stdout, trimmed; `None` without git or a
/// checkout.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// `path` as git printed it (relative to the package's directory, or absolute).
fn absolute(path: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    match dir {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    }
}
