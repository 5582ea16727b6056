#!/usr/bin/env bash
# The Ansible lab: Debian 12 containers on this machine that the playbooks are applied to.
#
#   scripts/lab.sh root             build (or check) the cached Debian 12 root
#   scripts/lab.sh up HOST...       boot one container per HOST and write the connection inventory
#   scripts/lab.sh down             stop every container this lab started
#
# The root is a debootstrap of bookworm (minbase) with systemd, python3, the libraries the
# estuary package depends on and the Debian packages the monitoring and postgresql roles
# install, cached in ${ESTUARY_LAB_CACHE:-~/.cache/estuary-lab}/root-<hash of the package
# list>: a root made from another list (another branch's) is another folder, never rebuilt
# under containers that run from it. Each container boots
# it with `systemd-nspawn --volatile=overlay`: a fresh target every boot (its writes go to a
# tmpfs), the cached root untouched. The containers share the host's network namespace, so
# every service in the lab listens on its own 127.0.0.x address (see inventories/lab/).
#
# `machinectl shell` and `systemd-run -M` do not work on hosts whose PID 1 is not systemd, so
# Ansible reaches a container through the community.general.chroot connection with an nsenter
# wrapper as the chroot program (one wrapper per host, in the run folder): it enters every
# namespace of the container's PID 1 and runs the command there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ESTUARY_LAB_CACHE:-$HOME/.cache/estuary-lab}"
run="${ESTUARY_LAB_RUN:-/tmp/estuary-lab}"
mirror="${ESTUARY_LAB_MIRROR:-http://deb.debian.org/debian}"
# What the containers need besides minbase: an init, D-Bus for systemctl, python3 (and
# python3-apt for ansible.builtin.apt), the estuary package's dependencies, and what the
# monitoring role (prometheus) and the postgresql role (postgresql, python3-psycopg2 for
# community.postgresql) install, all installed once here so that a lab boot needs no download.
# The roles find those packages installed and ask apt for nothing.
packages="systemd systemd-sysv dbus python3 python3-apt adduser procps ca-certificates curl
libavcodec59 libavformat59 libavfilter8 libavutil57 libswscale6 libswresample4 libpostproc56
prometheus postgresql python3-psycopg2"
# Services those packages enable on install; each container runs only what its roles start.
disabled_units="prometheus.service postgresql.service"
stamp_text="bookworm minbase; $(echo $packages); disabled: $disabled_units"
root="$cache/root-$(echo "$stamp_text" | sha256sum | cut -c1-12)"

log() { echo "lab: $*" >&2; }

build_root() {
  if [ -f "$root/.estuary-lab" ] && [ "$(cat "$root/.estuary-lab")" = "$stamp_text" ]; then
    log "cached Debian 12 root: $root"
    return
  fi
  command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null \
    || { log "debootstrap and systemd-nspawn are needed (scripts/setup-debian.sh test)"; exit 1; }
  log "building the Debian 12 root in $root (debootstrap, a few minutes; cached afterwards)"
  mkdir -p "$cache"
  local tmp="$root.building"
  rm -rf "$tmp" "$root"
  debootstrap --variant=minbase bookworm "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # No package may start its service in the chroot: it would run on this machine, outside
  # any container (policy-rc.d refuses every start while the packages install).
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  # shellcheck disable=SC2086
  chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends $packages >"$cache/packages.log" 2>&1 \
    || { tail -20 "$cache/packages.log" >&2; exit 1; }
  rm -f "$tmp/usr/sbin/policy-rc.d"
  chroot "$tmp" apt-get clean
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/locale/*
  # No getty on a console nobody reads, no timers doing apt work behind the tests' back.
  for unit in getty@tty1.service console-getty.service apt-daily.timer apt-daily-upgrade.timer; do
    chroot "$tmp" systemctl mask "$unit" >/dev/null 2>&1 || true
  done
  # shellcheck disable=SC2086
  chroot "$tmp" systemctl disable $disabled_units >/dev/null 2>&1 \
    || { log "could not disable $disabled_units in the root"; exit 1; }
  echo "$stamp_text" >"$tmp/.estuary-lab"
  mv "$tmp" "$root"
  log "root ready: $(du -sh "$root" | cut -f1)"
}

leader_of() {
  local pid="$1" child
  child="$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')"
  [ -n "$child" ] && echo "$child"
}

up() {
  [ "$#" -gt 0 ] || { log "usage: lab.sh up HOST..."; exit 2; }
  build_root
  mkdir -p "$run"
  local inv="$run/connection.yml"
  # A self-signed certificate for the lab's edges (inventories/lab reads it from lab_tls_dir).
  if [ ! -f "$run/tls/cert.pem" ]; then
    mkdir -p "$run/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.80,IP:127.0.0.81" \
      -keyout "$run/tls/key.pem" -out "$run/tls/cert.pem" 2>/dev/null
  fi
  printf '# Written by scripts/lab.sh: how Ansible reaches each lab container.\nall:\n  vars:\n    lab_tls_dir: %s\n  hosts:\n' "$run/tls" >"$inv"
  for host in "$@"; do
    if [ -f "$run/$host.pid" ] && kill -0 "$(cat "$run/$host.pid")" 2>/dev/null; then
      log "$host is already running"; exit 1
    fi
    # Several containers boot the same root, each with its own overlay: the root's lock is
    # for writers, and with --volatile=overlay no container writes to it.
    SYSTEMD_NSPAWN_LOCK=0 setsid systemd-nspawn -D "$root" --boot --register=no --keep-unit \
      --console=passive -M "$host" --hostname="$host" --volatile=overlay \
      </dev/null >"$run/$host.log" 2>&1 &
    echo $! >"$run/$host.pid"
  done
  for host in "$@"; do
    local pid leader="" state=""
    pid="$(cat "$run/$host.pid")"
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || { cat "$run/$host.log" >&2; log "$host did not boot"; exit 1; }
      leader="$(leader_of "$pid" || true)"
      if [ -n "$leader" ]; then
        state="$(nsenter -t "$leader" -a -- systemctl is-system-running 2>/dev/null || true)"
        case "$state" in running|degraded) break ;; esac
      fi
      sleep 0.2
    done
    case "$state" in running|degraded) ;; *) cat "$run/$host.log" >&2; log "$host: systemd says '$state'"; exit 1 ;; esac
    cat >"$run/nsenter-$host" <<WRAP
#!/bin/sh
# Ansible's chroot connection calls this as CHROOT_EXE ROOT CMD...: run CMD in container $host.
shift
exec nsenter -t $leader -a -- /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "\$@"
WRAP
    chmod +x "$run/nsenter-$host"
    echo "$leader" >"$run/$host.leader"
    cat >>"$inv" <<HOST
    $host:
      ansible_connection: community.general.chroot
      ansible_host: $root
      ansible_chroot_exe: $run/nsenter-$host
      ansible_python_interpreter: /usr/bin/python3
HOST
    log "$host is up (systemd $state, PID 1 is host PID $leader)"
  done
}

down() {
  [ -d "$run" ] || return 0
  local pids=()
  for f in "$run"/*.pid; do
    [ -f "$f" ] || continue
    local pid; pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null && grep -q systemd-nspawn "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid"; pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$run"/*.leader "$run"/nsenter-* "$run/connection.yml"
  [ "${#pids[@]}" -eq 0 ] || log "stopped ${#pids[@]} container(s)"
}

case "${1:-}" in
  root) build_root ;;
  up) shift; up "$@" ;;
  down) down ;;
  *) echo "usage: scripts/lab.sh root | up HOST... | down" >&2; exit 2 ;;
esac
