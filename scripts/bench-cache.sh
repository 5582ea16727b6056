#!/usr/bin/env bash
# Estuary edge's pull-through cache vs nginx proxy_cache, Varnish and Apache Traffic Server on
# the same machine, in front of the same origin: cold-miss collapse (200 clients on one
# uncached 2 MB object) and hot RAM-tier hits (wrk). Installs the peers and load tool, builds
# in release mode, runs the bench and writes the report into BENCHMARKS.md (between the
# `cache-peers` markers).
#
#   bash scripts/bench-cache.sh                 # full run: median of 3, 10 s per hot-hit figure, about 15 minutes
#   bash scripts/bench-cache.sh --quick         # one repetition, 3 s per figure
#   bash scripts/bench-cache.sh --only collapse --peers varnish
#
# Extra arguments go to `estuary-bench cache-vs-peers` (see `--help`). The work folder
# (content, configs, caches, logs, the origin's access log) is bench-out-cache/ at the
# repository root; nginx's cache goes to /dev/shm. Run it on a quiet machine: the bench waits
# for the CPUs to be idle before each run and repeats a hot-hit run that other programs
# disturbed, but cannot make a busy machine fair.
set -euo pipefail

cd "$(dirname "$0")/.."

. scripts/bench-packages.sh
install_packages nginx varnish trafficserver wrk util-linux
# The Debian packages start their own daemons; the bench runs its own copies on other ports.

cargo build --release -p estuary -p estuary-bench

exec "${CARGO_TARGET_DIR:-target}/release/estuary-bench" cache-vs-peers --write-md BENCHMARKS.md "$@"
