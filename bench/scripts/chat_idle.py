#!/usr/bin/env python3
"""Idle WebSocket connections: memory per connection of `estuary chat-relay` against
mosquitto (MQTT over WebSockets), the same client load in one run.

Each server is started alone with a config of its own, then N clients (spread over
127.0.0.2-127.0.0.201 as source addresses) complete the WebSocket handshake and the
protocol's own greeting (the relay: a valid token, an open device; mosquitto: CONNECT with
a unique client id and keepalive 600 s, then SUBSCRIBE to one topic) and stay silent. The
figure is the growth of the server's anonymous memory (RssAnon) divided by N, after a warm-up
of 500 connections that are closed again.

Usage: bench/scripts/chat_idle.py [--n 15000] [--estuary target/release/estuary]
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

KEY = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def token(user):
    text = f"exp={int(time.time()) + 3600}~acl=/chat/user/{user}~kid=k1"
    return text + "~hmac=" + hmac.new(bytes.fromhex(KEY), text.encode(), hashlib.sha256).hexdigest()


def masked(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(n)


def mqtt_connect(client_id):
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02" + (600).to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


def mqtt_subscribe(topic):
    t = topic.encode()
    body = (1).to_bytes(2, "big") + len(t).to_bytes(2, "big") + t + b"\x00"
    return bytes([0x82, len(body)]) + body


async def open_one(kind, port, i):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 200}", 0), limit=4096)
    if kind == "relay":
        path = "/ws?" + urllib.parse.urlencode({"token": token(f"u{i}")})
        proto = ""
    else:
        path = "/mqtt"
        proto = "Sec-WebSocket-Protocol: mqtt\r\n"
    writer.write((f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{proto}\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"{kind}: {head[:60]!r}")
    if kind == "mosquitto":
        writer.write(masked(0x2, mqtt_connect(f"c{i}")))
        connack = await read_frame(reader)
        if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
            raise RuntimeError(f"CONNACK {connack!r}")
        writer.write(masked(0x2, mqtt_subscribe("room")))
        suback = await read_frame(reader)
        if suback[:1] != b"\x90":
            raise RuntimeError(f"SUBACK {suback!r}")
    return reader, writer


async def hold(kind, port, n, first=0):
    sem = asyncio.Semaphore(200)
    conns = []

    async def one(i):
        async with sem:
            conns.append(await open_one(kind, port, first + i))

    await asyncio.gather(*(one(i) for i in range(n)))
    return conns


def close_all(conns):
    for _, w in conns:
        w.close()


async def measure(kind, pid, port, n):
    close_all(await hold(kind, port, 500, first=1_000_000))
    await asyncio.sleep(1.0)
    before = rss_anon_kib(pid)
    conns = await hold(kind, port, n)
    await asyncio.sleep(1.0)
    after = rss_anon_kib(pid)
    close_all(conns)
    return {"server": kind, "connections": len(conns), "rss_anon_before_kib": before,
            "rss_anon_after_kib": after, "kib_per_connection": round((after - before) / n, 2)}


def wait_port(port):
    import socket
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=15000)
    p.add_argument("--estuary", default="target/release/estuary")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
        limit_note = "raised to 200000"
    except (ValueError, OSError) as e:
        limit_note = f"hard open-files limit {hard}; raising it: {e}"
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    results = []
    with tempfile.TemporaryDirectory() as d:
        relay_port, mqtt_port = 7390, 7391
        with open(f"{d}/relay.toml", "w") as f:
            f.write(f"[node]\nid = \"bench\"\nsite = \"lab\"\n[listen]\nhttp = \"127.0.0.1:{relay_port}\"\n"
                    f"[auth.keys]\nk1 = \"{KEY}\"\n[store]\npath = \"{d}/chat.db\"\n"
                    "[limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n"
                    "idle_timeout = \"10m\"\n[shutdown]\ndrain_timeout = \"5s\"\n")
        with open(f"{d}/mosquitto.conf", "w") as f:
            # Debian's mosquitto 2.0.11 starts a WebSockets listener only beside a plain MQTT
            # one, and binds it to every address whatever the listener line says
            # (eclipse-mosquitto/mosquitto#2284, #3045).
            f.write(f"listener {mqtt_port + 1} 127.0.0.1\nlistener {mqtt_port}\nprotocol websockets\n"
                    "allow_anonymous true\npersistence false\nmax_connections -1\nlog_dest none\n")
        for kind, cmd, port in [
            ("relay", [args.estuary, "chat-relay", "--config", f"{d}/relay.toml"], relay_port),
            ("mosquitto", [mosquitto, "-c", f"{d}/mosquitto.conf"], mqtt_port),
        ]:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                results.append(asyncio.run(measure(kind, proc.pid, port, args.n)))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    relay, mosq = results
    print(json.dumps({"open_files": limit_note, "results": results,
                      "ratio_relay_to_mosquitto": round(relay["kib_per_connection"] / mosq["kib_per_connection"], 2)},
                     indent=1))


if __name__ == "__main__":
    sys.exit(main())
