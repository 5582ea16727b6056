#!/usr/bin/env bash
# The demo command: builds Estuary, makes a self-signed certificate and a 30-second sample
# clip, starts an origin, uploads the clip to it over TUS and waits for its packaging (HLS +
# DASH ladder), starts an edge that fills from the origin and the steering service in front of
# it, a chat relay with its demo page, and two SFUs at two sites registered with the control
# plane, and prints signed URLs that play, two chat URLs (alice and bob, for two browser tabs),
# a meeting the control plane placed on the first SFU (WHIP and WHEP URLs with its room token,
# and two meeting pages: one on each SFU, the second relaying the room from the first), plus
# the metrics URLs. Stop it with Ctrl-C (all drain and exit). ESTUARY_DEMO_BIN=<path> runs a binary
# already built instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
scripts/setup-debian.sh demo
export PATH="$HOME/.cargo/bin:$PATH"

site="${ESTUARY_DEMO_DIR:-$PWD/demo-site}"
http_port="${ESTUARY_DEMO_HTTP_PORT:-8080}"
https_port="${ESTUARY_DEMO_HTTPS_PORT:-8443}"
admin_port="${ESTUARY_DEMO_ADMIN_PORT:-9901}"
origin_port="${ESTUARY_DEMO_ORIGIN_PORT:-9000}"
origin_admin_port="${ESTUARY_DEMO_ORIGIN_ADMIN_PORT:-9001}"
cp_port="${ESTUARY_DEMO_CONTROL_PLANE_PORT:-7000}"
steer_port="${ESTUARY_DEMO_STEERING_PORT:-7100}"
dns_port="${ESTUARY_DEMO_DNS_PORT:-5353}"
chat_port="${ESTUARY_DEMO_CHAT_PORT:-7200}"
sfu_port="${ESTUARY_DEMO_SFU_PORT:-7300}"
sfu_udp_port="${ESTUARY_DEMO_SFU_UDP_PORT:-7301}"
# A second SFU at another site ("far"): participants placed there are relayed (cascading).
far_port="${ESTUARY_DEMO_FAR_SFU_PORT:-7310}"
far_udp_port="${ESTUARY_DEMO_FAR_SFU_UDP_PORT:-7311}"
mkdir -p "$site/content" "$site/origin"

if [ -n "${ESTUARY_DEMO_BIN:-}" ]; then
  bin="$(realpath "$ESTUARY_DEMO_BIN")"
  echo "== using $bin"
else
  echo "== building estuary (release)"
  cargo build --release --locked --bin estuary
  bin="${CARGO_TARGET_DIR:-$PWD/target}/release/estuary"
fi

if [ ! -f "$site/cert.pem" ]; then
  echo "== making a self-signed certificate for localhost and 127.0.0.1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$site/key.pem" -out "$site/cert.pem" 2>/dev/null
fi

if [ ! -f "$site/source.mp4" ]; then
  echo "== making a 30-second 720p sample clip with ffmpeg (the upload)"
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 30 -c:v libx264 -preset veryfast -crf 20 -pix_fmt yuv420p -c:a aac -b:a 128k "$site/source.mp4"
fi

# A secret of N random bytes, in hex, kept in $site/FILE across runs: secret FILE N.
secret() {
  [ -f "$site/$1" ] || openssl rand -hex "$2" > "$site/$1"
  cat "$site/$1"
}
# One credential per node, bound to its id, site and role on the control plane.
operator_token="$(secret operator.token 20)"
origin_cred="$(secret origin.cred 20)"
edge_cred="$(secret edge.cred 20)"
steering_cred="$(secret steering.cred 20)"
chat_cred="$(secret chat-relay.cred 20)"
# Chat media: the relay signs upload credentials the origin accepts with this shared key.
media_upload_key="$(secret chat-media-upload.key 32)"
sfu_cred="$(secret sfu.cred 20)"
far_cred="$(secret sfu-far.cred 20)"
# Room tokens (acl /rooms/<room>): the SFU accepts this key, the control plane signs the
# tokens of the meetings it places with it.
rooms_key="$(secret rooms.key 32)"
# The origin signs every asset.json it publishes; the edge and the control plane trust only
# manifests signed with this key.
[ -f "$site/manifest-keys.txt" ] || "$bin" manifest keygen --key-id demo-origin > "$site/manifest-keys.txt"
manifest_secret="$(sed -n 's/^key = "\(.*\)"$/\1/p' "$site/manifest-keys.txt")"
manifest_keys="[manifest_keys]
$(grep '^demo-origin = ' "$site/manifest-keys.txt")"
cat > "$site/control-plane.toml" <<TOML
[listen]
http = "127.0.0.1:$cp_port"
[database]
url = "sqlite://control-plane.db"
[auth.operator_tokens]
demo = "$operator_token"
[auth.nodes.demo-origin]
site = "demo"
role = "origin"
token = "$origin_cred"
[auth.nodes.demo-edge]
site = "demo"
role = "edge"
token = "$edge_cred"
[auth.nodes.demo-steering]
site = "demo"
role = "steering"
token = "$steering_cred"
[auth.nodes.demo-chat-relay]
site = "demo"
role = "chat-relay"
token = "$chat_cred"
[auth.nodes.demo-sfu]
site = "demo"
role = "sfu"
token = "$sfu_cred"
[auth.nodes.demo-sfu-far]
site = "far"
role = "sfu"
token = "$far_cred"
[auth.site_networks]
demo = ["127.0.0.0/8"]
[meetings]
key_id = "demo-rooms"
key = "$rooms_key"
token_ttl = "1day"
$manifest_keys
TOML
"$bin" check-config "$site/control-plane.toml"
joined() {
  printf '[control_plane]\nurl = "http://127.0.0.1:%s"\ntoken = "%s"\ninterval = "2s"\nstore_capacity = "2GiB"\n' "$cp_port" "$1"
}

upload_token="$(secret upload.token 24)"
cat > "$site/origin.toml" <<TOML
[node]
id = "demo-origin"
site = "demo"
[listen]
http = "127.0.0.1:$origin_port"
admin = "127.0.0.1:$origin_admin_port"
[storage]
root = "origin/storage"
[state]
dir = "origin/state"
[auth.upload_tokens]
demo = "$upload_token"
[auth.upload_keys]
demo-chat-media = "$media_upload_key"
[packaging]
ladder = ["720p", "480p", "360p"]
segment_seconds = 4
[signing]
key_id = "demo-origin"
key = "$manifest_secret"
$(joined "$origin_cred")
TOML
"$bin" check-config "$site/origin.toml"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== starting the control plane on 127.0.0.1:$cp_port (log: $site/control-plane.log)"
(cd "$site" && exec "$bin" control-plane --config control-plane.toml) 2>>"$site/control-plane.log" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$cp_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== starting the origin on 127.0.0.1:$origin_port (log: $site/origin.log)"
(cd "$site" && exec "$bin" origin --config origin.toml) 2>>"$site/origin.log" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$origin_admin_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

auth=(-H "Authorization: Bearer $upload_token")
state=$(curl -sS "${auth[@]}" "http://127.0.0.1:$origin_port/v1/assets/demo" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
if [ "$state" != "ready" ] && [ "$state" != "queued" ] && [ "$state" != "packaging" ]; then
  echo "== uploading the clip to the origin over TUS (asset id: demo)"
  size=$(stat -c %s "$site/source.mp4")
  meta="filename $(printf source.mp4 | base64 -w0),asset $(printf demo | base64 -w0)"
  location=$(curl -sS -D - -o /dev/null -X POST "${auth[@]}" -H "Tus-Resumable: 1.0.0" \
    -H "Upload-Length: $size" -H "Upload-Metadata: $meta" "http://127.0.0.1:$origin_port/uploads/" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case "$location" in /*) location="http://127.0.0.1:$origin_port$location" ;; esac
  curl -fsS -X PATCH "${auth[@]}" -H "Tus-Resumable: 1.0.0" -H "Upload-Offset: 0" \
    -H "Content-Type: application/offset+octet-stream" --data-binary "@$site/source.mp4" "$location"
fi
echo "== packaging (decode once, H.264 ladder 720p/480p/360p + AAC, CMAF for HLS and DASH)"
while :; do
  status=$(curl -sS "${auth[@]}" "http://127.0.0.1:$origin_port/v1/assets/demo")
  case "$status" in
    *'"state":"ready"'*) break ;;
    *'"state":"failed"'*) echo "packaging failed: $status" >&2; exit 1 ;;
  esac
  now="$(echo "$status" | sed -n 's/.*"state":"\([a-z]*\)".*"progress":\([0-9.]*\).*/\1 \2/p;s/.*"progress":\([0-9.]*\).*"state":"\([a-z]*\)".*/\2 \1/p' | head -1)"
  if [ "$now" != "${last:-}" ]; then echo "   $now"; last="$now"; fi
  sleep 1
done
if ! curl -fsS -o /dev/null "http://127.0.0.1:$origin_port/v/demo/asset.json.sig"; then
  # Published by an earlier demo, before origins signed their manifests: sign it now.
  ESTUARY_MANIFEST_KEY="$manifest_secret" "$bin" manifest sign --key-id demo-origin "$site/origin/storage/v/demo" >/dev/null
fi
echo "   ready: http://127.0.0.1:$origin_port/v/demo/master.m3u8 (and manifest.mpd, asset.json, asset.json.sig)"

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

key="$(secret token.key 32)"
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
[cors]
allow_origins = ["*"]
[cache]
ram = "512MiB"
disk_dir = "cache"
disk = "2GiB"
[upstream]
origin = ["http://127.0.0.1:$origin_port"]
[log]
access = "access.log"
$manifest_keys
$(joined "$edge_cred")
TOML
"$bin" check-config "$site/edge.toml"
cat > "$site/steering.toml" <<TOML
[node]
id = "demo-steering"
site = "demo"
[listen]
http = "127.0.0.1:$steer_port"
dns = "127.0.0.1:$dns_port"
[control_plane]
url = "http://127.0.0.1:$cp_port"
token = "$steering_cred"
[geo]
[tokens]
kid = "demo"
key = "$key"
ttl = "24h"
[steering]
scheme = "http"
ttl = "5s"
[dns]
zone = "cdn.demo."
ns_addresses = ["127.0.0.1"]
TOML
"$bin" check-config "$site/steering.toml"
# The chat relay checks user tokens (acl /chat/user/<user>) with a key of its own; the demo
# signs one per user below. Neither the relay nor its page ever holds a way to make them.
chat_key="$(secret chat.key 32)"
cat > "$site/chat-relay.toml" <<TOML
[node]
id = "demo-chat-relay"
site = "demo"
[listen]
http = "127.0.0.1:$chat_port"
[auth.keys]
demo-chat = "$chat_key"
[store]
path = "chat-relay.db"
[media]
origin = "http://127.0.0.1:$origin_port"
cdn = "http://127.0.0.1:$http_port"
upload_key = { kid = "demo-chat-media", secret = "$media_upload_key" }
cdn_key = { kid = "demo", secret = "$key" }
[control_plane]
url = "http://127.0.0.1:$cp_port"
token = "$chat_cred"
interval = "2s"
TOML
"$bin" check-config "$site/chat-relay.toml"

cat > "$site/sfu.toml" <<TOML
[node]
id = "demo-sfu"
site = "demo"
[listen]
http = "127.0.0.1:$sfu_port"
udp = "127.0.0.1:$sfu_udp_port"
tcp = "127.0.0.1:$sfu_udp_port"
public_ip = "127.0.0.1"
[auth.keys]
demo-rooms = "$rooms_key"
[control_plane]
url = "http://127.0.0.1:$cp_port"
token = "$sfu_cred"
interval = "2s"
TOML
"$bin" check-config "$site/sfu.toml"
cat > "$site/sfu-far.toml" <<TOML
[node]
id = "demo-sfu-far"
site = "far"
[listen]
http = "127.0.0.1:$far_port"
udp = "127.0.0.1:$far_udp_port"
public_ip = "127.0.0.1"
[auth.keys]
demo-rooms = "$rooms_key"
[control_plane]
url = "http://127.0.0.1:$cp_port"
token = "$far_cred"
interval = "2s"
TOML
"$bin" check-config "$site/sfu-far.toml"

sign() { "$bin" token sign --key-id demo --key "$key" --acl '/v/demo/*' --ttl 86400 --path "$2" --base "$1"; }
plain=$(sign "http://127.0.0.1:$http_port" /v/demo/master.m3u8)
tls=$(sign "https://localhost:$https_port" /v/demo/master.m3u8)
dash=$(sign "http://127.0.0.1:$http_port" /v/demo/manifest.mpd)
# The chat page's URL for USER talking to PEER, with USER's token (query form, valid 24 h).
chat_url() {
  echo "$("$bin" token sign --key-id demo-chat --key "$chat_key" --acl "/chat/user/$1" --ttl 86400 \
    --path /chat --base "http://127.0.0.1:$chat_port" | sed -n 2p)&user=$1&peer=$2"
}
alice_url=$(chat_url alice bob)
bob_url=$(chat_url bob alice)
cat <<MSG

Estuary demo site: $site
  Control plane: http://127.0.0.1:$cp_port/  (dashboard; operator token: $operator_token)
            export ESTUARY_CONTROL_PLANE=http://127.0.0.1:$cp_port ESTUARY_TOKEN=$operator_token
            then: $bin nodes | $bin fill status | $bin purge '/v/demo/*' 
  Origin:   http://127.0.0.1:$origin_port  (asset "demo" packaged from source.mp4; log: origin.log)
            status: curl -H 'Authorization: Bearer $upload_token' http://127.0.0.1:$origin_port/v1/assets/demo
  Edge:     fills /v/ from the origin into RAM + disk (cache/); /v/ needs a signed URL
  Logs:     $site/access.log (one JSON line per request); the edge's operational log below
  Steering: http://127.0.0.1:$steer_port/v1/playback/demo  (ranked edges with signed URLs; log: steering.log)
            Content Steering: http://127.0.0.1:$steer_port/v1/playback/demo/steered.m3u8 (and steered.mpd)
  Geo-DNS:  dig @127.0.0.1 -p $dns_port edge.cdn.demo A +subnet=10.1.2.0/24   (and demo.cdn.demo, SOA, NS)
  Chat:     ws://127.0.0.1:$chat_port/ws (chat relay; store: chat-relay.db; log: chat-relay.log)
            media.upload: TUS to the origin, files served by the edge with signed URLs ([media])
  SFU:      http://127.0.0.1:$sfu_port (WHIP /whip/<room>, WHEP /whep/<room>; media on UDP $sfu_udp_port, or TCP $sfu_udp_port (ICE-TCP); log: sfu.log)
            a meeting: curl -H 'Authorization: Bearer $operator_token' -d '{"region":"demo"}' http://127.0.0.1:$cp_port/v1/meetings

Signed URLs for the sample stream through the edge (valid 24 h):
  path form, plain HTTP:  $(echo "$plain" | sed -n 3p)
  DASH, plain HTTP:       $(echo "$dash" | sed -n 3p)
  path form, HTTPS/h2/h3: $(echo "$tls" | sed -n 3p)
  query form, HTTPS:      $(echo "$tls" | sed -n 2p)
                          (opens the playlist only: relative segment URLs do not inherit a query)

Play it:
  ffplay '$(echo "$plain" | sed -n 3p)'
  ffprobe -hide_banner '$(echo "$tls" | sed -n 3p)'
  in a browser (hls.js): http://127.0.0.1:$http_port/player/index.html#$(echo "$plain" | sed -n 3p)
  (The certificate is self-signed: browsers ask you to accept it at https://localhost:$https_port/ first.)

Chat: open each in its own browser tab (or two browsers), and write from one to the other:
  alice: $alice_url
  bob:   $bob_url
  (one tick: stored; two: delivered to the other's tab; blue: read. Another user:
   $bin token sign --key-id demo-chat --key \$(cat $site/chat.key) --acl /chat/user/NAME --ttl 86400 --path /chat --base http://127.0.0.1:$chat_port)

Operate it:
  metrics:  http://127.0.0.1:$admin_port/metrics  (origin: http://127.0.0.1:$origin_admin_port/metrics, chat: http://127.0.0.1:$chat_port/metrics, SFU: http://127.0.0.1:$sfu_port/metrics)
  health:   http://127.0.0.1:$admin_port/healthz   ready: http://127.0.0.1:$admin_port/readyz
  reload the certificate: kill -HUP <pid>; drain and stop: Ctrl-C or kill -TERM <pid>

MSG
cd "$site"
"$bin" steering --config steering.toml 2>>steering.log &
pids+=($!)
"$bin" chat-relay --config chat-relay.toml 2>>chat-relay.log &
pids+=($!)
"$bin" sfu --config sfu.toml 2>>sfu.log &
pids+=($!)
"$bin" sfu --config sfu-far.toml 2>>sfu-far.log &
pids+=($!)
# A meeting, placed by the control plane on the SFU once it counts the SFU up: how to publish
# into it and watch it.
(
  for _ in $(seq 1 60); do
    meeting="$(curl -fsS -H "Authorization: Bearer $operator_token" -d '{"region":"demo"}' \
      "http://127.0.0.1:$cp_port/v1/meetings" 2>/dev/null)" && break
    meeting=""
    sleep 1
  done
  if [ -z "$meeting" ]; then
    echo "demo: the control plane placed no meeting (is the SFU up? see sfu.log)" >&2
    exit 0
  fi
  # field KEY...: the meeting's value at that path.
  field() { echo "$meeting" | python3 -c 'import json, sys
m = json.load(sys.stdin)
for k in sys.argv[1:]:
    m = m[k]
print(m)' "$@"; }
  room="$(field room)"
  token="$(field token)"
  # A second participant, at site "far": the control plane sends it to the far SFU and
  # orders that SFU to relay the room from the first (once it counts the far SFU up).
  far=""
  for _ in $(seq 1 30); do
    far="$(curl -fsS -H "Authorization: Bearer $operator_token" -d '{"region":"far"}' \
      "http://127.0.0.1:$cp_port/v1/meetings/$room/participants" 2>/dev/null)" || far=""
    case "$far" in *'"cascade"'*) break ;; esac
    far=""
    sleep 1
  done
  if [ -n "$far" ]; then
    far_token="$(echo "$far" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
    pages="  meeting pages (open both; the browser asks for the camera; the far SFU relays the room):
    at site demo: http://127.0.0.1:$sfu_port/rooms/$room#token=$token&name=ann
    at site far:  http://127.0.0.1:$far_port/rooms/$room#token=$far_token&name=bob"
  else
    pages="  (the far SFU did not come up: no cascaded page; see sfu-far.log)
  meeting page: http://127.0.0.1:$sfu_port/rooms/$room#token=$token&name=ann"
  fi
  cat >&2 <<MEETING

Meeting $room, placed by the control plane on $(field sfu node) (token valid 24 h; late
joiners: GET http://127.0.0.1:$cp_port/v1/meetings/$room with the operator token):
  publish (WHIP): POST $(field sfu whip)   Authorization: Bearer $token
  watch (WHEP):   POST $(field sfu whep)
  with the test client (aiortc from PyPI), a test pattern and a tone:
    python3 $repo/tests/clients/whip_whep.py publish --url http://127.0.0.1:$sfu_port --room $room --token '$token' --seconds 600
    python3 $repo/tests/clients/whip_whep.py watch --url http://127.0.0.1:$sfu_port --room $room --token '$token' --seconds 10
  or OBS (Service WHIP, Server the WHIP URL, Bearer Token the token).
$pages

MEETING
) &
"$bin" edge --config edge.toml &
pids+=($!)
edge_pid=$!
# Pre-position the asset on the edge through the control plane: a push is recorded at once
# and placed as soon as the control plane counts the edge up (`fill status` shows it pending
# until then).
if ESTUARY_TOKEN="$operator_token" "$bin" push demo --control-plane "http://127.0.0.1:$cp_port" \
  >"$site/push.log" 2>&1; then
  cat "$site/push.log" >&2
else
  echo "demo: the push was refused (the edge still fills the asset from the origin):" >&2
  cat "$site/push.log" >&2
fi
wait "$edge_pid"
