//! Diagnostics on stderr, each distinct line at most once per process, so that a loop of
//! failing calls never floods the output.

use std::collections::BTreeSet;

use parking_lot::Mutex;

/// Distinct lines remembered; past this, lines are dropped rather than remembered.
const MAX_LINES: usize = 64;

static PRINTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Prints `line` to stderr unless it was printed before.
pub fn once(line: &str) {
    let mut printed = PRINTED.lock();
    if printed.len() < MAX_LINES && printed.insert(line.to_owned()) {
        eprintln!("{line}");
    }
}
