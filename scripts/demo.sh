#!/usr/bin/env bash
# The demo command: builds Estuary, makes a self-signed certificate and a short sample HLS
# stream, starts an edge on it, and prints signed URLs that play, plus the metrics URL.
# Stop it with Ctrl-C (the edge drains and exits).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh demo
export PATH="$HOME/.cargo/bin:$PATH"

site="${ESTUARY_DEMO_DIR:-$PWD/demo-site}"
http_port="${ESTUARY_DEMO_HTTP_PORT:-8080}"
https_port="${ESTUARY_DEMO_HTTPS_PORT:-8443}"
admin_port="${ESTUARY_DEMO_ADMIN_PORT:-9901}"
mkdir -p "$site/content/v/demo"

echo "== building estuary (release)"
cargo build --release --locked --bin estuary
bin="$PWD/target/release/estuary"

if [ ! -f "$site/cert.pem" ]; then
  echo "== making a self-signed certificate for localhost and 127.0.0.1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$site/key.pem" -out "$site/cert.pem" 2>/dev/null
fi

if [ ! -f "$site/content/v/demo/master.m3u8" ]; then
  echo "== making a 30-second sample HLS stream (two renditions, CMAF segments) with ffmpeg"
  out="$site/content/v/demo"
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 30 \
    -filter_complex "[0:v]split=2[a][b];[b]scale=640:360[b360]" \
    -map "[a]" -map "[b360]" -map 1:a -map 1:a \
    -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 \
    -b:v:0 2500k -b:v:1 700k -c:a aac -b:a 128k \
    -f hls -hls_time 4 -hls_playlist_type vod -hls_segment_type fmp4 \
    -hls_segment_filename "$out/%v/seg_%03d.m4s" -hls_fmp4_init_filename init.mp4 \
    -master_pl_name master.m3u8 -var_stream_map "v:0,a:0,name:720p v:1,a:1,name:360p" \
    "$out/%v/index.m3u8"
fi

player="$site/content/player"
if [ ! -f "$player/hls.min.js" ]; then
  echo "== fetching hls.js from npm for the browser player page"
  mkdir -p "$player" "$site/npm"
  if npm install --silent --prefix "$site/npm" hls.js@1 >/dev/null 2>&1; then
    cp "$site/npm/node_modules/hls.js/dist/hls.min.js" "$player/"
  else
    echo "   (npm is not available: the browser page will not work; ffplay/ffprobe still do)" >&2
  fi
fi
cp docs/demo/player.html "$player/index.html"

key_file="$site/token.key"
[ -f "$key_file" ] || openssl rand -hex 32 > "$key_file"
key="$(cat "$key_file")"
cat > "$site/edge.toml" <<TOML
[node]
id = "demo-edge"
site = "demo"
[listen]
http = "127.0.0.1:$http_port"
https = "127.0.0.1:$https_port"
admin = "127.0.0.1:$admin_port"
[tls]
cert = "cert.pem"
key = "key.pem"
[store]
root = "content"
[auth]
protected = ["/v/"]
[auth.keys]
demo = "$key"
[log]
access = "access.log"
TOML
"$bin" check-config "$site/edge.toml"

sign() { "$bin" token sign --key-id demo --key "$key" --acl '/v/demo/*' --ttl 86400 --path /v/demo/master.m3u8 --base "$1"; }
plain=$(sign "http://127.0.0.1:$http_port")
tls=$(sign "https://localhost:$https_port")
cat <<MSG

Estuary demo edge: $site
  Content:  $site/content (pre-positioned; /v/ needs a signed URL)
  Logs:     $site/access.log (one JSON line per request); operational logs below

Signed URLs for the sample stream (valid 24 h):
  path form, plain HTTP:  $(echo "$plain" | sed -n 3p)
  path form, HTTPS/h2/h3: $(echo "$tls" | sed -n 3p)
  query form, HTTPS:      $(echo "$tls" | sed -n 2p)
                          (opens the playlist only: relative segment URLs do not inherit a query)

Play it:
  ffplay '$(echo "$plain" | sed -n 3p)'
  ffprobe -hide_banner '$(echo "$tls" | sed -n 3p)'
  in a browser (hls.js): http://127.0.0.1:$http_port/player/index.html#$(echo "$plain" | sed -n 3p)
  (The certificate is self-signed: browsers ask you to accept it at https://localhost:$https_port/ first.)

Operate it:
  metrics:  http://127.0.0.1:$admin_port/metrics
  health:   http://127.0.0.1:$admin_port/healthz   ready: http://127.0.0.1:$admin_port/readyz
  reload the certificate: kill -HUP <pid>; drain and stop: Ctrl-C or kill -TERM <pid>

MSG
cd "$site"
exec "$bin" edge --config edge.toml
