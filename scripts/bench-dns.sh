#!/usr/bin/env bash
# Estuary's geo-DNS against gdnsd (geoip plugin, `nets` map) and Knot DNS (geoip module in
# subnet mode, and a plain static zone), all serving the same zone and coverage map, one at a
# time on loopback: the server pinned to CPU 0, dnsperf to CPU 1, every query with its own EDNS
# Client Subnet (dnsperf's binary input). Then the steering HTTP API under wrk. Installs the
# peers and load tools, builds in release mode, runs the bench and writes the report into
# BENCHMARKS.md (between the `dns-vs-peers` markers).
#
#   bash scripts/bench-dns.sh                    # full run: median of 3 x 10 s per figure, about 8 minutes
#   bash scripts/bench-dns.sh --quick            # one repetition of 3 s; prints only
#   bash scripts/bench-dns.sh --servers gdnsd,knot --only dns
#
# Extra arguments go to `estuary-bench dns-vs-peers` (see `--help`); with any, the report is
# only printed unless `--write-md BENCHMARKS.md` is among them. The work folder (zone data,
# configs, query file, logs) is bench-out-dns/ at the repository root. Run it on a quiet
# machine: the bench waits for the CPUs to be idle before each run and repeats a run that
# other programs disturbed, but cannot make a busy machine fair.
set -euo pipefail

cd "$(dirname "$0")/.."

. scripts/bench-packages.sh
install_packages dnsperf gdnsd knot knot-module-geoip dnsutils wrk util-linux
# The Debian packages may start their own daemons on port 53; the bench runs its own copies on
# ports 19153-19161.

cargo build --release -p estuary -p estuary-bench

bin="${CARGO_TARGET_DIR:-target}/release"
if [ "$#" -eq 0 ]; then
    exec "$bin/estuary-bench" dns-vs-peers --write-md BENCHMARKS.md
fi
exec "$bin/estuary-bench" dns-vs-peers "$@"
