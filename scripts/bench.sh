#!/usr/bin/env bash
# Estuary edge vs nginx on the same machine and the same files: installs the peers and load
# tools, builds the workspace in release mode, runs the bench and writes the report into
# BENCHMARKS.md.
#
#   bash scripts/bench.sh                  # full run: median of 3 x 10 s per figure, about 20 minutes
#   bash scripts/bench.sh --quick          # 3 s per figure
#   bash scripts/bench.sh --only tls,pinned --repeat 3
#
# Extra arguments go to `estuary-bench edge-vs-nginx` (see `--help`). The work folder
# (content, certificate, configs, logs) is bench-out/ at the repository root. Run it on a
# quiet machine: the bench waits for the CPUs to be idle before each run and repeats a run
# that other programs disturbed, but cannot make a busy machine fair.
set -euo pipefail

cd "$(dirname "$0")/.."

. scripts/bench-packages.sh
install_packages nginx wrk nghttp2-client openssl

cargo build --release --workspace

exec "${CARGO_TARGET_DIR:-target}/release/estuary-bench" edge-vs-nginx --write-md BENCHMARKS.md "$@"
