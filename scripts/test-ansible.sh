#!/usr/bin/env bash
# The deployment test: Ansible applied for real to a lab of Debian 12 containers.
#
#   scripts/test-ansible.sh          (scripts/test.sh runs it after cargo test)
#
# 1. Ansible and ansible-lint from PyPI in a venv (~/.cache/estuary-lab/venv): yamllint,
#    `ansible-lint --profile production` and `ansible-playbook --syntax-check` on every
#    playbook, with both inventories. Then tests/render.yml (no containers): every file the
#    roles would install from the example inventory rendered here, with test values for the
#    vault's secrets, and each config checked: `estuary check-config` on the edge, origin,
#    control-plane, steering, chat-relay and sfu configs (with their TLS files and coverage zones),
#    `promtool check config` on Prometheus's.
# 2. The Debian package of the debug binary cargo test built (scripts/package-deb.sh).
# 3. The lab (scripts/lab.sh): five containers from a cached debootstrap root (rebuilt when
#    missing): control plane, origin, steering, and two edges of one site (the first also
#    runs a chat relay, the second an SFU on an address of its own, 127.0.0.82).
# 4. site.yml, then from outside the containers: every unit enabled and active, every
#    installed config passes `estuary check-config`, capabilities only where a port < 1024
#    is configured; the control plane on PostgreSQL (role postgresql) with the nodes in it;
#    Prometheus (role monitoring) sees every node's /metrics target up; the chat relay
#    answers /readyz and its page, the control plane lists it as a chat-relay node, and two
#    WebSocket clients chat through it (tests/clients/chat.py online: messages, receipts,
#    presence, history); the SFU answers /readyz, the control plane lists it as an sfu node,
#    a meeting made through the deployed control plane (POST /v1/meetings) lands on it, and
#    aiortc publishes over WHIP and watches over WHEP through it with the meeting's token,
#    decoding frames (the lab shares the host's network, so UDP reaches it); a clip uploaded over TUS to the deployed origin, pushed through the
#    deployed control plane (push.yml) onto both edges, and played through an edge with a
#    signed URL by hls.js in headless Chromium; steering and its geo-DNS name those edges.
# 5. site.yml again: changed=0 on every host.
# 6. A config check-config refuses: the play fails, the edge keeps its config, its process
#    and its service.
# 7. upgrade.yml to a newer package while a client fetches segments from both edges, with
#    failover (tests/clients/rolling_client.py): no request fails, each edge's /readyz goes
#    200, 503 (draining), 200; every node runs the new package (the chat relay and the SFU,
#    each beside an edge, run the new binary too, and the SFU forwards media again).
# Every failure fails the script; nothing is skipped.
set -euo pipefail
# systemd-nspawn and nsenter need root.
[ "$(id -u)" -eq 0 ] || exec sudo -E "$0" "$@"
cd "$(dirname "$0")/.."
repo="$PWD"
start_time=$(date +%s)
target="${CARGO_TARGET_DIR:-$repo/target}"
cache="${ESTUARY_LAB_CACHE:-$HOME/.cache/estuary-lab}"
export ESTUARY_LAB_RUN="${ESTUARY_LAB_RUN:-/tmp/estuary-lab}"
run="$ESTUARY_LAB_RUN"
venv="$cache/venv"
ansible_version=12.3.0
ansible_lint_version=26.10.1
step() { echo "== test-ansible ($(($(date +%s) - start_time)) s): $*"; }
# Once the lab is up, a failure also prints what each container can tell (diagnose, below).
fail() { echo "test-ansible: FAILED: $*" >&2; [ -z "${lab_up:-}" ] || diagnose; exit 1; }

step "Ansible $ansible_version, ansible-lint $ansible_lint_version, tuspy, websockets and aiortc from PyPI; the browser clients from npm"
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('ansible') == '$ansible_version' and m.version('ansible-lint') == '$ansible_lint_version'; import tusclient, websockets" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ansible==$ansible_version" "ansible-lint==$ansible_lint_version" tuspy websockets
fi
# The WHIP/WHEP peer for the SFU (tests/clients/whip_whep.py).
"$venv/bin/python" -c "import aiortc" 2>/dev/null || "$venv/bin/pip" install -q "aiortc==1.16.0"
if [ ! -d "$repo/tests/clients/node_modules/playwright-core" ] || [ ! -d "$repo/tests/clients/node_modules/hls.js" ]; then
  npm ci --prefix "$repo/tests/clients" --no-audit --no-fund --silent
fi
export PATH="$venv/bin:$PATH" PYTHONWARNINGS=ignore ANSIBLE_CONFIG="$repo/ansible/ansible.cfg"
cd "$repo/ansible"

step "yamllint, ansible-lint --profile production, --syntax-check"
yamllint -s .
ansible-lint --profile production -q
for playbook in site.yml upgrade.yml push.yml; do
  for inv in inventories/lab inventories/example; do
    ansible-playbook --syntax-check -i "$inv" "$playbook" >/dev/null \
      || fail "$playbook does not pass --syntax-check with $inv"
  done
done

step "the example inventory rendered on this machine: estuary check-config, promtool and nft -c on its configs"
bin="$target/debug/estuary"
[ -x "$bin" ] || (cd "$repo" && cargo build --bin estuary)
mkdir -p "$run"
ansible-playbook -i inventories/example tests/render.yml -e "estuary_bin=$bin" -e "render_dir=$run/render" >"$run/render.log" 2>&1 \
  || { grep -A12 '^fatal:\|^failed:\|\[ERROR\]' "$run/render.log" | head -60 >&2; fail "tests/render.yml with the example inventory (see $run/render.log)"; }
echo "   $(find "$run/render" -name '*.toml' | wc -l) Estuary configs and $(find "$run/render" -name prometheus.yml | wc -l) Prometheus config rendered and valid (in $run/render)"

step "the Debian package of the debug build"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)"
deb="$("$repo/scripts/package-deb.sh" --binary "$bin" --version "$version" --out "$run/deb")"
deb_new="$("$repo/scripts/package-deb.sh" --binary "$bin" --version "$version+upgrade1" --out "$run/deb")"

step "the lab: five Debian 12 containers"
hosts=(lab-cp lab-origin lab-steering lab-edge-a1 lab-edge-a2)
"$repo/scripts/lab.sh" down
cleanup() { "$repo/scripts/lab.sh" down || true; }
trap cleanup EXIT
"$repo/scripts/lab.sh" up "${hosts[@]}"
lab_up=1
inventory=(-i inventories/lab -i "$run/connection.yml")
on() { local host="$1"; shift; "$run/nsenter-$host" root "$@"; }

# What a failed play leaves to read: on every host, the units that failed, the end of each
# Estuary unit's journal (the reason a service would not start: a check-config refusal, a
# port in use), and the space the container's writes have (its tmpfs).
diagnose() {
  local host unit
  for host in "${hosts[@]}"; do
    echo "-- $host: failed units, the Estuary units' journals, free space" >&2
    on "$host" systemctl --failed --no-legend --no-pager >&2 || true
    for unit in $(on "$host" systemctl list-units --all --plain --no-legend 'estuary-*' 2>/dev/null | awk '{print $1}'); do
      on "$host" journalctl -u "$unit" -n 25 --no-pager -o short-monotonic >&2 || true
    done
    on "$host" df -h / /var/cache >&2 || true
  done
  free -m >&2 || true
}

# Runs a playbook; its output goes to $run/<name>.log, and the recap is printed.
play() {
  local name="$1" rc=0; shift
  ansible-playbook "${inventory[@]}" "$@" >"$run/$name.log" 2>&1 || rc=$?
  sed -n '/^PLAY RECAP/,$p' "$run/$name.log"
  return "$rc"
}

step "site.yml (first run)"
play site-1 site.yml -e "estuary_package_deb=$deb" \
  || { grep -B2 -A12 'FAILED!\|fatal:' "$run/site-1.log" | head -60 >&2; fail "site.yml"; }

step "units enabled and active, configs valid, capabilities only below port 1024"
declare -A unit_of=([lab-cp]=control-plane [lab-origin]=origin [lab-steering]=steering [lab-edge-a1]=edge [lab-edge-a2]=edge)
for host in "${hosts[@]}"; do
  service="${unit_of[$host]}"
  unit="estuary-$service.service"
  [ "$(on "$host" systemctl is-enabled "$unit")" = enabled ] || fail "$host: $unit is not enabled"
  [ "$(on "$host" systemctl is-active "$unit")" = active ] || fail "$host: $unit is not active"
  on "$host" /usr/bin/estuary check-config "/etc/estuary/$service.toml" >/dev/null \
    || fail "$host: /etc/estuary/$service.toml does not pass check-config"
  # Only the geo-DNS listens below 1024 in the lab (port 53).
  caps="$(on "$host" systemctl show -p AmbientCapabilities --value "$unit")"
  if [ "$service" = steering ]; then
    [[ "$caps" == *cap_net_bind_service* ]] || fail "$host: steering on port 53 lacks CAP_NET_BIND_SERVICE ($caps)"
  else
    [ -z "$caps" ] || fail "$host: $unit holds capabilities it does not need: $caps"
  fi
  exposure="$(on "$host" systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  [ -n "$exposure" ] || fail "$host: no exposure level for $unit"
  echo "   $host: $unit enabled, active, config valid, capabilities '${caps}', exposure $exposure"
done
rw="$(on lab-edge-a1 systemctl show -p ReadWritePaths --value estuary-edge.service)"
[ "$rw" = "/var/cache/estuary/edge /srv/estuary/store" ] || fail "edge ReadWritePaths: '$rw'"
# The chat relay beside the first edge: a unit of its own, writing only its store's folder.
unit=estuary-chat-relay.service
[ "$(on lab-edge-a1 systemctl is-enabled "$unit")" = enabled ] || fail "lab-edge-a1: $unit is not enabled"
[ "$(on lab-edge-a1 systemctl is-active "$unit")" = active ] || fail "lab-edge-a1: $unit is not active"
on lab-edge-a1 /usr/bin/estuary check-config /etc/estuary/chat-relay.toml >/dev/null \
  || fail "lab-edge-a1: /etc/estuary/chat-relay.toml does not pass check-config"
caps="$(on lab-edge-a1 systemctl show -p AmbientCapabilities --value "$unit")"
[ -z "$caps" ] || fail "lab-edge-a1: $unit holds capabilities it does not need: $caps"
rw="$(on lab-edge-a1 systemctl show -p ReadWritePaths --value "$unit")"
[ "$rw" = /var/lib/estuary/chat-relay ] || fail "chat relay ReadWritePaths: '$rw'"
exposure="$(on lab-edge-a1 systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || fail "lab-edge-a1: no exposure level for $unit"
echo "   lab-edge-a1: $unit enabled, active, config valid, no capabilities, writes $rw, exposure $exposure"
# The SFU beside the second edge: a unit of its own, writing nowhere.
unit=estuary-sfu.service
[ "$(on lab-edge-a2 systemctl is-enabled "$unit")" = enabled ] || fail "lab-edge-a2: $unit is not enabled"
[ "$(on lab-edge-a2 systemctl is-active "$unit")" = active ] || fail "lab-edge-a2: $unit is not active"
on lab-edge-a2 /usr/bin/estuary check-config /etc/estuary/sfu.toml >/dev/null \
  || fail "lab-edge-a2: /etc/estuary/sfu.toml does not pass check-config"
caps="$(on lab-edge-a2 systemctl show -p AmbientCapabilities --value "$unit")"
[ -z "$caps" ] || fail "lab-edge-a2: $unit holds capabilities it does not need: $caps"
exposure="$(on lab-edge-a2 systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || fail "lab-edge-a2: no exposure level for $unit"
echo "   lab-edge-a2: $unit enabled, active, config valid, no capabilities, exposure $exposure"

step "the control plane runs on PostgreSQL (postgresql role, in lab-cp)"
on lab-cp grep -q '^url = "postgres://estuary:.*@127.0.0.77:5432/estuary"' /etc/estuary/control-plane.toml \
  || fail "the control plane's config does not name the lab's PostgreSQL"
[ "$(on lab-cp systemctl is-active postgresql@15-main.service)" = active ] || fail "lab-cp: PostgreSQL is not active"
curl -fsS http://127.0.0.77:7000/metrics | grep -qx 'estuary_cp_database_up 1' || fail "the control plane's database is not up"
nodes_in_db=""
for _ in $(seq 1 20); do
  nodes_in_db="$(on lab-cp runuser -u postgres -- psql -d estuary -tAc 'SELECT count(*) FROM nodes')"
  [ "$nodes_in_db" -ge 6 ] 2>/dev/null && break
  sleep 0.5
done
[ "$nodes_in_db" -ge 6 ] 2>/dev/null || fail "PostgreSQL holds $nodes_in_db nodes, not the lab's origin, steering, two edges, chat relay and SFU"
echo "   control-plane.toml names postgres://estuary@127.0.0.77:5432/estuary; its nodes table holds $nodes_in_db nodes"

step "Prometheus (monitoring role, in lab-cp) scrapes every Estuary node: every target up"
[ "$(on lab-cp systemctl is-active prometheus.service)" = active ] || fail "lab-cp: prometheus is not active"
on lab-cp promtool check config /etc/prometheus/prometheus.yml >/dev/null || fail "the installed prometheus.yml"
prometheus=http://127.0.0.77:9090
targets_ok=""
for _ in $(seq 1 30); do
  if curl -fsS "$prometheus/api/v1/targets?state=active" >"$run/targets.json" \
    && curl -fsS "$prometheus/api/v1/query" --data-urlencode 'query=up{job=~"estuary-.*"}' >"$run/up.json" \
    && "$venv/bin/python" - "$run/targets.json" "$run/up.json" "${hosts[@]}" lab-chat-a1 lab-sfu-a2 2>"$run/targets.err" <<'PY'
import json, sys
targets = json.load(open(sys.argv[1]))["data"]["activeTargets"]
up = json.load(open(sys.argv[2]))["data"]["result"]
hosts = sys.argv[3:]
# One target per lab node (the chat relay beside an edge is one of its own), each in its
# service's job, each scraped and up.
want = {"estuary-control-plane": 1, "estuary-origin": 1, "estuary-steering": 1, "estuary-edge": 2,
        "estuary-chat-relay": 1, "estuary-sfu": 1}
jobs = {}
for t in targets:
    jobs[t["labels"]["job"]] = jobs.get(t["labels"]["job"], 0) + 1
assert jobs == want, f"targets by job: {jobs}"
down = [(t["labels"]["instance"], t["health"], t.get("lastError")) for t in targets if t["health"] != "up"]
assert not down, f"targets not up: {down}"
values = {r["metric"]["instance"]: r["value"][1] for r in up}
assert len(values) == len(hosts) and set(values.values()) == {"1"}, f"up: {values}"
for t in sorted(targets, key=lambda t: t["labels"]["job"]):
    print(f"   {t['labels']['job']:24} {t['labels']['instance']:20} {t['health']}")
PY
  then targets_ok=1; break; fi
  sleep 1
done
[ -n "$targets_ok" ] || fail "Prometheus does not see every Estuary target up: $(tail -1 "$run/targets.err" 2>/dev/null)"

step "the chat relay (lab-edge-a1): ready, its page, a chat-relay node on the control plane, a real chat through it"
relay=127.0.0.80:7200
curl -fsS -o /dev/null "http://127.0.0.80:7201/readyz" || fail "the chat relay's /readyz is not 200"
page="$(curl -fsS -D - "http://$relay/chat")" || fail "the chat relay's page"
echo "$page" | grep -qi '^content-security-policy: default-src' || fail "the chat page has no Content-Security-Policy"
echo "$page" | grep -q '<title>Estuary chat</title>' || fail "the chat page is not the chat page"
operator_token=lab-test-operator-token-8a3964249b6a0edd02f0df1c
# Waits (30 s) until the deployed control plane lists node ID of ROLE up in site lab-a; prints it.
listed_up() {
  local id="$1" role="$2" node=""
  for _ in $(seq 1 30); do
    curl -fsS -H "Authorization: Bearer $operator_token" http://127.0.0.77:7000/v1/nodes >"$run/nodes.json" \
      && node="$("$venv/bin/python" - "$run/nodes.json" "$id" "$role" <<'PY'
import json, sys
nodes = [n for n in json.load(open(sys.argv[1])) if n["id"] == sys.argv[2]]
n = nodes[0] if nodes else {}
if n.get("role") == sys.argv[3] and n.get("up") and n.get("site") == "lab-a":
    print(f'{n["id"]} role {n["role"]} site {n["site"]} up, at {n["addresses"].get("http")}')
PY
)" && [ -n "$node" ] && break
    sleep 1
  done
  [ -n "$node" ] || fail "the control plane does not list $id as an up $role node: $(cat "$run/nodes.json" 2>/dev/null)"
  echo "   control plane: $node"
}
listed_up lab-chat-a1 chat-relay
chat_key=3f9a1c7e5d2b8046e1f3a5c7d9b0e2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4f6
"$venv/bin/python" "$repo/tests/clients/chat.py" online --url "ws://$relay" --key "$chat_key" --kid lab-chat \
  || fail "tests/clients/chat.py online through the deployed chat relay"
echo "   chat.py online through ws://$relay: messages, delivered and read receipts, typing, history, presence"

step "the SFU (lab-edge-a2, 127.0.0.82): ready, an sfu node on the control plane, a meeting placed on it, media through it"
curl -fsS -o /dev/null "http://127.0.0.82:7302/readyz" || fail "the SFU's /readyz is not 200"
listed_up lab-sfu-a2 sfu
# Publishes and watches a new meeting placed by the deployed control plane; prints what the
# watcher decoded.
sfu_meeting() {
  local meeting room token whip
  meeting="$(curl -fsS -H "Authorization: Bearer $operator_token" -H 'Content-Type: application/json' \
    -d '{"region":"lab-a"}' http://127.0.0.77:7000/v1/meetings)" || fail "POST /v1/meetings on the deployed control plane"
  room="$(echo "$meeting" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["room"])')"
  token="$(echo "$meeting" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  whip="$(echo "$meeting" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["sfu"]["whip"])')"
  [ "$whip" = "http://127.0.0.82:7300/whip/$room" ] || fail "the meeting is not on the lab's SFU: $meeting"
  "$venv/bin/python" "$repo/tests/clients/whip_whep.py" pair --url http://127.0.0.82:7300 --room "$room" \
    --token "$token" --seconds 3 >"$run/whip_whep.json" || fail "whip_whep.py pair through the deployed SFU"
  "$venv/bin/python" - "$run/whip_whep.json" "$room" <<'PY' || fail "the watcher decoded too little through the deployed SFU: $(tail -1 "$run/whip_whep.json")"
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
w = r["watchers"]
assert w and all(x["video_frames"] >= 20 and x["audio_frames"] >= 20 for x in w), r
print(f"   meeting {sys.argv[2]} on lab-sfu-a2: aiortc published over WHIP and watched over WHEP, "
      f"{w[0]['video_frames']} video and {w[0]['audio_frames']} audio frames decoded")
PY
}
sfu_meeting

step "a clip uploaded over TUS to the deployed origin"
clip="$cache/clip.mp4"
if [ ! -f "$clip" ]; then
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=640x360:rate=25" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 8 -c:v libx264 -preset veryfast \
    -pix_fmt yuv420p -c:a aac -b:a 96k "$clip.tmp.mp4"
  mv "$clip.tmp.mp4" "$clip"
fi
upload_token=lab-test-upload-token-e84811c70b10c81b4543d723
origin=http://127.0.0.78:9000
"$venv/bin/python" "$repo/tests/clients/tus_upload.py" start "$origin/uploads/" "$upload_token" "$clip" lab \
  "$(stat -c %s "$clip")" >/dev/null
for _ in $(seq 1 120); do
  status="$(curl -sS -H "Authorization: Bearer $upload_token" "$origin/v1/assets/lab")"
  case "$status" in
    *'"state":"ready"'*) break ;;
    *'"state":"failed"'*) fail "packaging failed: $status" ;;
  esac
  sleep 1
done
[[ "$status" == *'"state":"ready"'* ]] || fail "the asset is not ready after 120 s: $status"

step "push.yml: the asset pre-positioned on both edges of the site through the deployed control plane"
play push push.yml -e '{"push_assets": ["lab"], "push_replicas": 2, "push_timeout_seconds": 120}' \
  || { grep -B2 -A12 'FAILED!\|fatal:' "$run/push.log" | tail -40 >&2; fail "push.yml"; }
placements="$(ESTUARY_TOKEN=$operator_token "$bin" fill status --control-plane http://127.0.0.77:7000 lab)"
echo "$placements" | sed 's/^/   /'
for host in lab-edge-a1 lab-edge-a2; do
  echo "$placements" | grep -q "^lab  *$host  *lab-a  *present" || fail "$host: the asset is not present"
  on "$host" test -f /srv/estuary/store/v/lab/asset.json || fail "$host: the pushed asset is not in its store"
done

step "a signed URL plays through the deployed edge (hls.js in headless Chromium)"
key=a05dbdaaa825089b746e36ea561252b7d9911d7a7db98166393d3e6d43a75dac
for edge in 127.0.0.80 127.0.0.81; do
  url="$("$bin" token sign --key-id lab --key "$key" --acl '/v/lab/*' --ttl 600 \
    --path /v/lab/master.m3u8 --base "http://$edge:8080" | sed -n 3p)"
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://$edge:8080/v/lab/master.m3u8")"
  [ "$code" = 403 ] || fail "$edge: an unsigned request got $code, not 403"
  node "$repo/tests/clients/play.mjs" hls "$url" 4 || fail "$edge: hls.js did not play $url"
done
playback="$(curl -fsS http://127.0.0.79:7100/v1/playback/lab)" || fail "steering /v1/playback/lab"
[[ "$playback" == *127.0.0.80:8080* || "$playback" == *127.0.0.81:8080* ]] \
  || fail "steering names no lab edge: $playback"
answer="$(dig +short @127.0.0.79 -p 53 edge.cdn.lab A)"
echo "$answer" | grep -qx '127.0.0.8[01]' || fail "the geo-DNS answered '$answer' for edge.cdn.lab"

step "site.yml again: nothing changes"
play site-2 site.yml -e "estuary_package_deb=$deb" || fail "second site.yml"
if sed -n '/^PLAY RECAP/,$p' "$run/site-2.log" | grep -E '^[a-z]' | grep -v 'changed=0 '; then
  fail "the second site.yml changed something (see $run/site-2.log)"
fi

step "a config check-config refuses is never installed; the edge keeps serving"
before="$(on lab-edge-a1 sha256sum /etc/estuary/edge.toml)"
pid_before="$(on lab-edge-a1 systemctl show -p MainPID --value estuary-edge.service)"
if play refused site.yml --limit lab-edge-a1 -e "estuary_package_deb=$deb" -e edge_cache_policy=bogus; then
  fail "site.yml with a refused edge config succeeded"
fi
grep -q "unknown variant \`bogus\`" "$run/refused.log" || fail "the refusal is not check-config's (see $run/refused.log)"
[ "$(on lab-edge-a1 sha256sum /etc/estuary/edge.toml)" = "$before" ] || fail "the refused config replaced the old one"
[ "$(on lab-edge-a1 systemctl show -p MainPID --value estuary-edge.service)" = "$pid_before" ] \
  || fail "the edge was restarted"
url="$("$bin" token sign --key-id lab --key "$key" --acl '/v/lab/*' --ttl 600 \
  --path /v/lab/master.m3u8 --base http://127.0.0.80:8080 | sed -n 3p)"
curl -fsS -o /dev/null "$url" || fail "the edge stopped serving"

step "upgrade.yml to a newer package while a client fetches segments from both edges"
token_url="$("$bin" token sign --key-id lab --key "$key" --acl '/v/lab/*' --ttl 1800 \
  --path /v/lab/master.m3u8 --base "http://EDGE" | sed -n 3p)"
prefix="${token_url%master.m3u8}"
prefix="${prefix/EDGE/\{edge\}}"
rm -f "$run/client.stop" "$run/client.json"
# A 24 MiB file in each edge's store, read slowly by the client, keeps requests in flight so
# that the drain has something to wait for (and /readyz 503 lasts long enough to be seen).
for host in lab-edge-a1 lab-edge-a2; do
  on "$host" sh -c 'head -c 24M /dev/urandom >/srv/estuary/store/big.bin'
done
ROLLING_BIG_PATH=/big.bin "$venv/bin/python" "$repo/tests/clients/rolling_client.py" "$run/client.json" "$run/client.stop" "$prefix" \
  127.0.0.80:8080 127.0.0.81:8080 -- 127.0.0.80:9901 127.0.0.81:9901 &
client_pid=$!
sleep 2
upgrade_rc=0
play upgrade upgrade.yml -e "estuary_package_deb=$deb_new" || upgrade_rc=$?
sleep 2
touch "$run/client.stop"
wait "$client_pid" || fail "the rolling client crashed"
for host in lab-edge-a1 lab-edge-a2; do
  on "$host" journalctl -u estuary-edge --no-pager -o cat >"$run/upgrade-$host.journal" 2>&1 || true
done
[ "$upgrade_rc" -eq 0 ] || { grep -B2 -A12 'FAILED!\|fatal:' "$run/upgrade.log" | tail -40 >&2; fail "upgrade.yml"; }
cat "$run/client.json" | tr -d '\n' | sed 's/  */ /g'; echo
"$venv/bin/python" - "$run/client.json" <<'PY' || fail "requests failed during the upgrade, or an edge never drained (the edges' journals: $run/upgrade-*.journal)"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["requests"] >= 20, f"only {r['requests']} requests"
assert not r["failures"], r["failures"]
for admin, seen in r["readyz"].items():
    # Ready, then draining (503), then (after the restart) ready again.
    assert "503" in seen, f"{admin} never answered 503: {seen}"
    i = seen.index("503")
    assert "200" in seen[:i] and "200" in seen[i:], f"{admin}: {seen}"
for edge, n in r["served_by"].items():
    assert n > 0, f"{edge} served nothing"
PY
for host in lab-edge-a1 lab-edge-a2 lab-cp lab-origin lab-steering; do
  installed="$(on "$host" dpkg-query -W -f='${Version}' estuary)"
  [ "$installed" = "$version+upgrade1" ] || fail "$host runs package $installed after the upgrade"
done
# The chat relay shares lab-edge-a1 with an edge: the edge's play replaced the binary under it.
relay_pid="$(on lab-edge-a1 systemctl show -p MainPID --value estuary-chat-relay.service)"
relay_exe="$(on lab-edge-a1 readlink "/proc/$relay_pid/exe")"
[ "$relay_exe" = /usr/bin/estuary ] || fail "the chat relay runs '$relay_exe' after the upgrade, not the new binary"
curl -fsS -o /dev/null "http://127.0.0.80:7201/readyz" || fail "the chat relay is not ready after the upgrade"
# The SFU shares lab-edge-a2 with an edge: the same, and it forwards media again.
sfu_pid="$(on lab-edge-a2 systemctl show -p MainPID --value estuary-sfu.service)"
sfu_exe="$(on lab-edge-a2 readlink "/proc/$sfu_pid/exe")"
[ "$sfu_exe" = /usr/bin/estuary ] || fail "the SFU runs '$sfu_exe' after the upgrade, not the new binary"
curl -fsS -o /dev/null "http://127.0.0.82:7302/readyz" || fail "the SFU is not ready after the upgrade"
listed_up lab-sfu-a2 sfu
sfu_meeting

step "passed"
