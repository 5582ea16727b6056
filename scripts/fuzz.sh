#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes (fuzz/fuzz_targets/*.rs) with cargo-fuzz and
# libFuzzer (AddressSanitizer), starting from the seeds in fuzz/seeds/<target>/ and keeping
# what it finds in fuzz/corpus/<target>/; a crash is saved in fuzz/artifacts/<target>/ and
# fails the run. Not part of the test suite (it needs minutes, not seconds).
#   scripts/fuzz.sh                  every target, 60 s each
#   scripts/fuzz.sh path 600         one target, 10 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer needs nightly's sanitizer flags: the nightly toolchain when installed, else the
# stable compiler with RUSTC_BOOTSTRAP=1.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
all=(token path dns_query manifest wire headers steering_manifest coverage_zones chat_frame sfu_demux sfu_payload sfu_tcp_framing sfu_sdp_offer sfu_signal)
if [ "${1:-all}" = all ]; then targets=("${all[@]}"); else targets=("$1"); fi
seconds=${2:-60}
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${seconds} s"
  "${fuzz[@]}" run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done
