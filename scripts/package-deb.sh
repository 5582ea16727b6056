#!/usr/bin/env bash
# Builds the Debian package of Estuary with dpkg-deb: estuary_<version>_amd64.deb.
#
#   scripts/package-deb.sh [--binary PATH | --profile release|debug] [--version V] [--out DIR]
#
# Contents: /usr/bin/estuary (debug info stripped), the example configs under
# /usr/share/doc/estuary/examples, the systemd units estuary-{edge,origin,control-plane,
# steering,chat-relay}.service under /lib/systemd/system (none enabled or started), and a postinst that
# makes the `estuary` system user. Depends are computed by dpkg-shlibdeps from the binary
# (Debian's FFmpeg libraries for the packager).
#
# --binary packages an already built binary (the tests package target/debug/estuary, which
# `cargo test` built); --profile builds nothing either, it only picks
# ${CARGO_TARGET_DIR:-target}/<profile>/estuary (release by default; build it first with
# `cargo build --release --bin estuary`). --version defaults to the Cargo.toml version (the
# upgrade test builds "newer" packages with it). Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
profile=release
binary=""
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
out="$target/deb"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: scripts/package-deb.sh [--binary PATH | --profile release|debug] [--version V] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ -n "$binary" ] || binary="$target/$profile/estuary"
[ -x "$binary" ] || { echo "package-deb: no binary at $binary (cargo build --bin estuary first)" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps objcopy; do
  command -v "$tool" >/dev/null || { echo "package-deb: $tool is missing (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done
case "$version" in [0-9]*) ;; *) echo "package-deb: version '$version' must start with a digit" >&2; exit 1 ;; esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$work/estuary"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/usr/share/doc/estuary/examples"
# Debug info is what makes a debug build 400 MB; the package needs none of it.
objcopy --strip-debug "$binary" "$pkg/usr/bin/estuary"
chmod 0755 "$pkg/usr/bin/estuary"
install -m 0644 scripts/deb/estuary-*.service "$pkg/lib/systemd/system/"
for f in docs/*.example.toml; do install -m 0644 "$f" "$pkg/usr/share/doc/estuary/examples/"; done
install -m 0644 README.md "$pkg/usr/share/doc/estuary/README.md"
gzip -9n "$pkg/usr/share/doc/estuary/README.md"
cat >"$pkg/usr/share/doc/estuary/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: estuary

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY
install -m 0755 scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$pkg/DEBIAN/"

# dpkg-shlibdeps wants a debian/control in its working folder.
mkdir -p "$work/src/debian"
printf 'Source: estuary\n\nPackage: estuary\nArchitecture: amd64\n' >"$work/src/debian/control"
shlibs="$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/estuary" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { echo "package-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: estuary
Version: $version
Architecture: amd64
Maintainer: Estuary developers <estuary@example.org>
Installed-Size: $size
Depends: $shlibs, adduser, procps
Section: net
Priority: optional
Homepage: https://github.com/estuary-cdn/estuary
Description: open video CDN appliance (edge, origin, control plane, steering, chat relay)
 One binary, estuary, runs each service as a subcommand: the edge (HLS/DASH over
 HTTP/1.1, HTTP/2 and HTTP/3 with a pull-through cache), the origin (TUS uploads and
 packaging into CMAF ladders), the control plane, steering (HTTP and geo-DNS) and
 the chat relay (WebSocket chat).
 The systemd units are installed but neither enabled nor started.
CONTROL
mkdir -p "$out"
deb="$out/estuary_${version}_amd64.deb"
# Fast compression: the test packages a debug build on every run.
dpkg-deb --root-owner-group -Zgzip -z3 --build "$pkg" "$deb" >/dev/null
echo "$deb"
