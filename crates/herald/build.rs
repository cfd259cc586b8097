//! Build script: hands the binary the commit it was built from, for `herald --version`.
//!
//! Written by hand rather than with `vergen-gitcl`: that crate needs Rust 1.95 (we build
//! on 1.89) and brings `bon`, `time` and `anyhow` into the build, and it watches
//! `<git dir>/refs/heads/…`, which in a `git worktree` is not where the branch lives, so
//! the commit went stale there. `git rev-parse --git-path` names the right files; the
//! whole job is the few lines below.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    // A commit given explicitly wins: a packager building from a crate tarball (no git
    // checkout, or someone else's) knows it and git does not.
    let commit = std::env::var("HERALD_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HERALD_COMMIT={}", commit.trim());
}

/// The short hash of HEAD, and the files whose change means HEAD moved: HEAD itself (a
/// checkout), the branch's ref (a commit) and `packed-refs` (where `git gc` moves refs).
fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    for file in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            watch(Path::new(&path), false);
        }
    }
    // Detached HEAD has no branch: HEAD itself then holds the hash.
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &branch])
    {
        watch(Path::new(&path), true);
    }
    Some(commit)
}

/// Tells Cargo to rerun when `path` changes. Cargo reruns every build for a path that does
/// not exist, so a missing file is skipped, or, for a branch whose ref is only in
/// `packed-refs` until its next commit writes it, replaced by the nearest directory that
/// exists (Cargo sees the file appear in it).
fn watch(path: &Path, or_nearest_dir: bool) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    } else if or_nearest_dir && let Some(dir) = path.ancestors().find(|dir| dir.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
}

/// `git args` in this crate's directory, its output trimmed; `None` if git is missing or
/// fails (not a checkout, or one git refuses as another user's).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
