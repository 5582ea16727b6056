#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the checks in CI order:
# format, lints, and the whole test suite (unit, property and black-box tests that start the
# real `estuary` binary on loopback and talk to it with curl, ffprobe, Python h2, a Rust
# HTTP/1.1+HTTP/2 client and the in-tree HTTP/3 client), then the deployment test
# (scripts/test-ansible.sh: the Debian package, and the Ansible playbooks applied for real to
# Debian 12 containers booted with systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh test
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== one rustls crypto provider (no ring in the tree)"
if cargo tree --workspace -i ring 2>/dev/null | grep -q '^ring v'; then
  echo "ring is in the dependency tree; use aws-lc-rs only" >&2
  exit 1
fi
echo "== cargo test"
cargo test --workspace --locked
echo "== deployment: the Debian package and Ansible applied to a lab of Debian 12 containers"
# Packages the debug binary cargo test just built; fails the run on any failure.
scripts/test-ansible.sh
