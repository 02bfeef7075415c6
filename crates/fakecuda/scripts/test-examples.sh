#!/bin/sh
# Builds the root package's cudarc examples and runs fakecuda's example tests against them
# (the tests skip when the examples are not built; here they must run).
# Honours CARGO_TARGET_DIR; pass --release to test release builds.
set -eu
cd "$(dirname "$0")/../../.."
cargo build --examples "$@"
FAKECUDA_REQUIRE_EXAMPLES=1 cargo test -p fakecuda --test examples "$@"
