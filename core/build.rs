//! Puts the git commit this build came from into `KZSCALER_GIT_COMMIT`, for `--version`.
//! A build outside a git checkout (a source archive, a container build without `.git`) takes
//! it from the environment variable of the same name, else says "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KZSCALER_GIT_COMMIT");
    let commit = std::env::var("KZSCALER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KZSCALER_GIT_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    // Rebuild when HEAD moves: HEAD itself, packed refs, and the branch HEAD names (each only
    // if it exists, or cargo would rerun this on every build). A packed branch has no file of
    // its own: its folder (refs/heads) shows when a commit writes one.
    for name in ["HEAD", "packed-refs"] {
        if let Some(path) = git_path(name).filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    if let Some(path) = run(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| git_path(&b)) {
        let watch = if path.exists() {
            Some(path.as_path())
        } else {
            path.parent().filter(|p| p.exists())
        };
        if let Some(watch) = watch {
            println!("cargo:rerun-if-changed={}", watch.display());
        }
    }
    run(&["rev-parse", "--short=12", "HEAD"])
}

fn git_path(name: &str) -> Option<PathBuf> {
    run(&["rev-parse", "--path-format=absolute", "--git-path", name]).map(PathBuf::from)
}

fn run(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
