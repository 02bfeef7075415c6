//! Says which commit the binary is built from (`gpuslice_build_info`): `SOURCE_COMMIT` where
//! the build sets it (an image built without `.git`), else git's `HEAD`, else `unknown`.
//!
//! The commit goes through a file in `OUT_DIR`, not `cargo::rustc-env`: cargo also sets a
//! build script's variables in the environment of the tests it runs, where a `GPUSLICE_`
//! variable the shim does not know makes it refuse CUDA, and one of another name could
//! collide with a user's.

use std::error::Error;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("commit"), commit())?;
    Ok(())
}

/// The commit being built, as short as git makes it unambiguous (12 characters at least).
fn commit() -> String {
    println!("cargo::rerun-if-env-changed=SOURCE_COMMIT");
    if let Ok(commit) = std::env::var("SOURCE_COMMIT")
        && !commit.trim().is_empty()
    {
        return commit.trim().to_string();
    }
    // Built again when HEAD moves: the file HEAD, the packed refs and the branch HEAD names.
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo::rerun-if-changed={file}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo::rerun-if-changed={file}");
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// What git prints for `args`, trimmed; `None` if it fails (no git, not a checkout).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
