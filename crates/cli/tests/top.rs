//! `gpuslice top`: refused when stdout is not a terminal (its screens are tested with
//! ratatui's `TestBackend` beside the code, in `src/top.rs`).

use crate::util::*;

#[test]
fn top_without_a_terminal_exits_2_and_points_to_status() {
    let t = TestDir::new();
    t.ledger();
    // The harness pipes stdout.
    let out = finish(t.gpuslice(&["top", "--dir"]).arg(t.ledger_dir()));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("needs a terminal"), "{out:?}");
    assert!(out.stderr.contains("gpuslice status"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn top_interval_must_be_a_number_of_milliseconds() {
    let t = TestDir::new();
    let out = finish(t.gpuslice(&["top", "--interval", "0"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--interval"), "{out:?}");
}
