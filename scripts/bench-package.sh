#!/usr/bin/env bash
# `estuary package` against the equivalent ffmpeg CLI command (speed, CPU, PSNR/SSIM and
# bitrate per rendition) and TUS upload throughput of `estuary origin` on loopback: installs
# what the bench needs, builds the workspace in release mode, runs the bench and writes the
# report into BENCHMARKS.md.
#
#   bash scripts/bench-package.sh            # full run: 60 s source, 3 runs each, 1 GiB uploads (about 20 minutes)
#   bash scripts/bench-package.sh --quick    # 10 s source, one run each, 256 MiB uploads (prints only)
#   bash scripts/bench-package.sh --only upload
#
# Extra arguments go to `estuary-bench package-vs-ffmpeg` (see `--help`). The work folder
# (source, outputs, logs, origin state) is bench-out-package/ at the repository root and needs
# about 6 GB free. Run it on a quiet machine: before every measured run the bench waits for
# other estuary-bench processes to end and for the CPUs to be idle.
set -euo pipefail

cd "$(dirname "$0")/.."

. scripts/bench-packages.sh
install_packages ffmpeg curl coreutils python3 python3-pip
if ! python3 -c 'import tusclient' 2>/dev/null; then
    python3 -m pip install --user tuspy || python3 -m pip install --user --break-system-packages tuspy
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
nice -n 10 cargo build --release --workspace

write_md=(--write-md BENCHMARKS.md)
for a in "$@"; do
    if [ "$a" = "--quick" ]; then
        write_md=()
    fi
done
exec "$CARGO_TARGET_DIR/release/estuary-bench" package-vs-ffmpeg "${write_md[@]}" "$@"
