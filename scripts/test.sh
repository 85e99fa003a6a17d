#!/usr/bin/env bash
# The test command: builds the binaries the multi-process tests start, then
# runs every test of the workspace. `.ci/run` calls this after starting the
# servers the tests need.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
