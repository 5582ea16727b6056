#!/usr/bin/env bash
# Installs what Estuary's demo and tests need on Debian 12. Safe to run again.
# Usage: scripts/setup-debian.sh [demo|test]
set -euo pipefail
what="${1:-test}"

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have curl || need_apt+=(curl)
have openssl || need_apt+=(openssl)
have ffmpeg || need_apt+=(ffmpeg)
have ffprobe || need_apt+=(ffmpeg)
have python3 || need_apt+=(python3 python3-pip)
have gcc || need_apt+=(build-essential)
have pkg-config || need_apt+=(pkg-config)
have git || need_apt+=(git)
# FFmpeg's libraries and headers for the packaging crate (ffmpeg-next builds against Debian's
# FFmpeg 5.1; bindgen needs libclang).
for pc in libavcodec libavformat libavutil libavfilter libavdevice libswscale libswresample; do
  pkg-config --exists "$pc" 2>/dev/null || need_apt+=("${pc}-dev")
done
[ -n "$(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null)" ] || need_apt+=(clang libclang-dev)
if [ "$what" = "demo" ]; then
  have npm || need_apt+=(npm)
fi
if [ "$what" = "test" ]; then
  have systemd-analyze || need_apt+=(systemd)
  have chromium || need_apt+=(chromium)
  # dig for the geo-DNS tests.
  have dig || need_apt+=(dnsutils)
  # A real PostgreSQL server for the control plane's replica tests (started by the tests).
  [ -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || need_apt+=(postgresql)
  have npm || need_apt+=(npm)
  # The chat relays' shared log in the cluster tests: NATS with JetStream (`nats-server -js`).
  have nats-server || need_apt+=(nats-server)
  # promtool (tests/monitoring_metrics.rs checks every service's /metrics with it) ships in
  # Debian's prometheus package; on a host whose init is systemd the package also starts a
  # Prometheus on port 9090.
  have promtool || need_apt+=(prometheus)
  python3 -c 'import h2' 2>/dev/null || have pip3 || have pip || need_apt+=(python3-pip)
  # The Debian package (dpkg-deb, dpkg-shlibdeps, objcopy) and the Ansible lab: a debootstrap
  # root booted with systemd-nspawn, Ansible from PyPI in a venv, yamllint.
  have dpkg-shlibdeps || need_apt+=(dpkg-dev)
  have objcopy || need_apt+=(binutils)
  have debootstrap || need_apt+=(debootstrap)
  have systemd-nspawn || need_apt+=(systemd-container)
  have nsenter || need_apt+=(util-linux)
  # nft -c checks the firewall the common role renders (in a network namespace of its own);
  # the SFU's ICE-TCP test drops UDP with it in a namespace of its own (ip, iproute2).
  have nft || need_apt+=(nftables)
  have ip || need_apt+=(iproute2)
  have yamllint || need_apt+=(yamllint)
  python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! have cargo; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with Debian's rustup" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -qq rustup >/dev/null 2>&1 || $SUDO apt-get install -y -qq cargo >/dev/null
    have rustup && rustup default stable >/dev/null
  fi
fi

if [ "$what" = "test" ]; then
  # Python test clients: HTTP/2 frame scripts (h2), a TUS client (tuspy), an S3-compatible
  # server (moto), a DNS client (dnspython), raw QUIC Initials (aioquic), chat clients
  # (websockets), WebRTC peers (aiortc).
  py_need=()
  python3 -c 'import h2' 2>/dev/null || py_need+=(h2)
  python3 -c 'import tusclient' 2>/dev/null || py_need+=(tuspy)
  python3 -c 'import moto.server' 2>/dev/null || py_need+=("moto[server]")
  python3 -c 'import dns.message' 2>/dev/null || py_need+=(dnspython)
  python3 -c 'import aioquic' 2>/dev/null || py_need+=(aioquic)
  python3 -c 'import websockets' 2>/dev/null || py_need+=(websockets)
  # WHIP/WHEP peers for the SFU tests: a WebRTC stack of its own (aiortc, with PyAV wheels).
  python3 -c 'import aiortc' 2>/dev/null || py_need+=("aiortc==1.16.0")
  if [ "${#py_need[@]}" -gt 0 ]; then
    echo "setup: installing Python packages ${py_need[*]}" >&2
    python3 -m pip install -q "${py_need[@]}" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "${py_need[@]}"
  fi
  # Browser players: hls.js and dash.js driven in Debian's Chromium by playwright-core.
  clients="$(dirname "$0")/../tests/clients"
  if [ ! -d "$clients/node_modules/playwright-core" ] || [ ! -d "$clients/node_modules/dashjs" ]; then
    echo "setup: installing the browser test clients from npm" >&2
    npm ci --prefix "$clients" --no-audit --no-fund --silent
  fi
  # HLS and DASH manifest parsers for the packaging tests.
  for mod in m3u8 mpegdash; do
    if ! python3 -c "import $mod" 2>/dev/null; then
      echo "setup: installing the Python $mod package" >&2
      python3 -m pip install -q "$mod" 2>/dev/null || python3 -m pip install -q --break-system-packages "$mod"
    fi
  done
fi
