#!/usr/bin/env python3
"""Chat relay scenarios for the black-box tests (tests/chat_relay_*.rs), with independent
WebSocket clients (the `websockets` package). Each scenario asserts what it sees and exits
non-zero on the first surprise; it prints one JSON line of results on success.

Usage: chat.py SCENARIO --url ws://127.0.0.1:PORT --key HEX [--kid k1] [scenario options]
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import time
import urllib.parse

import websockets

ARGS = None


def token(user, exp=None, acl=None, key=None, kid=None):
    exp = exp if exp is not None else int(time.time()) + 3600
    acl = acl if acl is not None else f"/chat/user/{user}"
    text = f"exp={exp}~acl={acl}~kid={kid or ARGS.kid}"
    mac = hmac.new(bytes.fromhex(key or ARGS.key), text.encode(), hashlib.sha256).hexdigest()
    return f"{text}~hmac={mac}"


def ws_url(tok, device=None, base=None):
    q = {"token": tok}
    if device is not None:
        q["device"] = device
    return f"{base or ARGS.url}/ws?{urllib.parse.urlencode(q)}"


def fail(msg):
    raise AssertionError(msg)


class Client:
    def __init__(self, ws, user, device):
        self.ws, self.user, self.device = ws, user, device

    @classmethod
    async def connect(cls, user, device="default", url=None):
        ws = await websockets.connect(
            ws_url(token(user), device, url), max_size=None, ping_interval=None, open_timeout=10
        )
        return cls(ws, user, device)

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def next(self, kind=None, timeout=5.0):
        """The next frame; with `kind`, it must be of that type."""
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            fail(f"{self.user}/{self.device}: no frame within {timeout}s (wanted {kind})")
        frame = json.loads(text)
        if kind is not None and frame.get("type") != kind:
            fail(f"{self.user}/{self.device}: wanted {kind}, got {frame}")
        return frame

    async def quiet(self, seconds=0.5):
        """Nothing arrives for `seconds`."""
        try:
            text = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return
        fail(f"{self.user}/{self.device}: unexpected frame {text}")

    async def send_message(self, to, cid, body):
        await self.send({"type": "send", "id": cid, "to": to, "body": body})
        sent = await self.next("sent")
        if sent["id"] != cid:
            fail(f"sent for {sent['id']}, wanted {cid}")
        return sent["msg"]

    async def messages(self, n):
        out = []
        for _ in range(n):
            out.append(await self.next("message"))
        return out

    async def ack(self, msgs):
        await self.send({"type": "ack", "ids": list(msgs)})

    async def closed(self, timeout=5.0):
        """Waits for the relay's close frame; returns (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            if e.rcvd is None:
                fail(f"{self.user}: the connection ended without a close frame")
            return e.rcvd.code, e.rcvd.reason
        except asyncio.TimeoutError:
            fail(f"{self.user}: not closed within {timeout}s")

    async def close(self):
        await self.ws.close()


def check(cond, msg):
    if not cond:
        fail(msg)


async def three_ticks(alice, bob, cid, body):
    """Alice sends bob a message; he gets it, acks it and reads it; alice sees all three ticks."""
    msg = await alice.send_message({"user": "bob"}, cid, body)
    m = await bob.next("message")
    check(m["msg"] == msg and m["from"] == "alice" and m["conversation"] == "user:alice"
          and m["body"] == body and isinstance(m["ts"], int), f"message {m}")
    await bob.ack([msg])
    r = await alice.next("receipt")
    check(r["msg"] == msg and r["by"] == "bob" and r["state"] == "delivered", f"receipt {r}")
    await bob.send({"type": "read", "conversation": "user:alice", "upto": msg})
    r = await alice.next("receipt")
    check(r["msg"] == msg and r["state"] == "read", f"read receipt {r}")
    return msg


async def online():
    alice = await Client.connect("alice")
    bob = await Client.connect("bob")
    msg = await three_ticks(alice, bob, "c1", "hello bob")
    # Typing is relayed, not stored; ping answers pong.
    await bob.send({"type": "typing", "to": {"user": "alice"}})
    t = await alice.next("typing")
    check(t == {"type": "typing", "from": "bob", "conversation": "user:bob"}, f"typing {t}")
    await alice.send({"type": "ping"})
    await alice.next("pong")
    # A reply, then the conversation's history from both sides, oldest first.
    reply = await bob.send_message({"user": "alice"}, "b1", "hi alice")
    await alice.next("message")
    await alice.send({"type": "history", "conversation": "user:bob", "before": None, "limit": 50})
    h = await alice.next("history")
    check([x["msg"] for x in h["messages"]] == [msg, reply], f"history {h}")
    await alice.send({"type": "history", "conversation": "user:bob", "before": reply, "limit": 50})
    h = await alice.next("history")
    check([x["body"] for x in h["messages"]] == ["hello bob"], f"history before {h}")
    # Presence: only to subscribers, with last_seen.
    await alice.send({"type": "presence.subscribe", "users": ["carol"]})
    p = await alice.next("presence")
    check(p["user"] == "carol" and p["online"] is False, f"presence {p}")
    carol = await Client.connect("carol")
    p = await alice.next("presence")
    check(p["online"] is True, f"presence online {p}")
    await carol.close()
    p = await alice.next("presence")
    check(p["online"] is False and p["last_seen"] > 0, f"presence offline {p}")
    await bob.quiet(0.3)
    print(json.dumps({"ok": True}))


async def offline():
    bob = await Client.connect("bob", "phone")
    await bob.close()
    alice = await Client.connect("alice")
    sent = [await alice.send_message({"user": "bob"}, f"c{i}", f"m{i}") for i in range(5)]
    bob = await Client.connect("bob", "phone")
    got = await bob.messages(5)
    check([m["msg"] for m in got] == sent, f"order {got} vs {sent}")
    check([m["body"] for m in got] == [f"m{i}" for i in range(5)], "bodies")
    await bob.quiet()
    await bob.ack(sent)
    receipts = [await alice.next("receipt") for _ in sent]
    check(sorted(r["msg"] for r in receipts) == sorted(sent), f"receipts {receipts}")
    await bob.close()
    bob = await Client.connect("bob", "phone")
    await bob.quiet()
    await alice.quiet(0.2)
    # The sender offline: its ticks wait for its device, and come once.
    last = await alice.send_message({"user": "bob"}, "c9", "while you were away")
    await alice.close()
    m = await bob.next("message")
    await bob.ack([m["msg"]])
    await bob.send({"type": "read", "conversation": "user:alice", "upto": m["msg"]})
    await bob.send({"type": "ping"})
    await bob.next("pong")
    alice = await Client.connect("alice")
    # Reading up to the last message reads the five before it too.
    ticks = [await alice.next("receipt") for _ in range(7)]
    want = [(last, "delivered")] + [(m, "read") for m in sent + [last]]
    check([(r["msg"], r["state"]) for r in ticks] == want, f"ticks after reconnect {ticks}")
    await alice.quiet()
    await alice.close()
    alice = await Client.connect("alice")
    await alice.quiet()
    print(json.dumps({"ok": True}))


async def multi_device():
    for d in ("phone", "laptop"):
        c = await Client.connect("bob", d)
        await c.close()
    alice = await Client.connect("alice")
    sent = [await alice.send_message({"user": "bob"}, f"c{i}", f"m{i}") for i in range(3)]
    phone = await Client.connect("bob", "phone")
    check([m["msg"] for m in await phone.messages(3)] == sent, "phone inbox")
    await phone.ack(sent)
    delivered = [await alice.next("receipt") for _ in sent]
    check(all(r["state"] == "delivered" for r in delivered), f"{delivered}")
    await phone.close()
    laptop = await Client.connect("bob", "laptop")
    check([m["msg"] for m in await laptop.messages(3)] == sent, "the laptop has its own inbox")
    await laptop.ack(sent)
    # The user already gave the delivered tick: the second device gives none.
    await alice.quiet(0.3)
    # Both devices online: each gets a live message.
    phone = await Client.connect("bob", "phone")
    await phone.quiet(0.2)
    live = await alice.send_message({"user": "bob"}, "live", "both")
    for dev in (phone, laptop):
        m = await dev.next("message")
        check(m["msg"] == live, f"live on {dev.device}")
    # A second connection of the same device replaces the first.
    again = await Client.connect("bob", "phone")
    code, _ = await phone.closed()
    check(code == 4000, f"replaced close code {code}")
    m = await again.next("message")
    check(m["msg"] == live, "the unacked live message is in the new connection's inbox")
    print(json.dumps({"ok": True}))


async def group():
    n = 100
    users = [f"u{i:03}" for i in range(n)]
    clients = await asyncio.gather(*(Client.connect(u) for u in users))
    owner, members = clients[0], clients[1:]
    await owner.send({"type": "group.create", "group": "big", "members": users + ["extra"]})
    e = await owner.next("error")
    check(e["code"] == "group_full", f"{e}")
    await owner.send({"type": "group.create", "group": "big", "members": users[1:]})
    g = await owner.next("group")
    check(len(g["members"]) == n, f"{len(g['members'])} members")
    await owner.send({"type": "group.add", "group": "big", "members": ["extra"]})
    e = await owner.next("error")
    check(e["code"] == "group_full", f"add over the limit: {e}")
    sent = [await owner.send_message({"group": "big"}, f"g{i}", f"hello {i}") for i in range(3)]
    t0 = time.monotonic()

    async def member(c):
        got = await c.messages(3)
        check([m["msg"] for m in got] == sent, f"{c.user} order")
        check(all(m["conversation"] == "group:big" and m["from"] == users[0] for m in got), "conv")
        await c.ack(sent)

    await asyncio.gather(*(member(c) for c in members))
    fanout = time.monotonic() - t0
    receipts = [await owner.next("receipt") for _ in range(3 * (n - 1))]
    check(len({(r["msg"], r["by"]) for r in receipts}) == 3 * (n - 1), "one receipt per member")
    # Outsiders cannot send to it; a member who left cannot either.
    outsider = await Client.connect("outsider")
    await outsider.send({"type": "send", "id": "x", "to": {"group": "big"}, "body": "hi"})
    e = await outsider.next("error")
    check(e["code"] == "not_member" and e["id"] == "x", f"{e}")
    await members[0].send({"type": "group.leave", "group": "big"})
    g = await members[0].next("group")
    check(len(g["members"]) == n - 1, "left")
    await members[0].send({"type": "send", "id": "y", "to": {"group": "big"}, "body": "hi"})
    check((await members[0].next("error"))["code"] == "not_member", "left member")
    print(json.dumps({"ok": True, "fanout_seconds": fanout}))


async def reconnect():
    alice = await Client.connect("alice")
    sent = [await alice.send_message({"user": "bob"}, f"c{i}", f"m{i}") for i in range(10)]
    bob = await Client.connect("bob")
    got = await bob.messages(10)
    check([m["msg"] for m in got] == sent, "first connection")
    await bob.ack(sent[:4])
    # The acks are handled before the close (one relay thread, in order); make sure with a ping.
    await bob.send({"type": "ping"})
    await bob.next("pong")
    await bob.close()
    bob = await Client.connect("bob")
    got = await bob.messages(6)
    check([m["msg"] for m in got] == sent[4:], f"only the unacked ones: {got}")
    await bob.quiet()
    receipts = [await alice.next("receipt") for _ in range(4)]
    check(sorted(r["msg"] for r in receipts) == sorted(sent[:4]), f"receipts {receipts}")
    await alice.quiet(0.2)
    later = await alice.send_message({"user": "bob"}, "later", "after the inbox")
    m = await bob.next("message")
    check(m["msg"] == later, "live after the inbox")
    print(json.dumps({"ok": True}))


async def kill9_send():
    alice = await Client.connect("alice")
    sent = [await alice.send_message({"user": "bob"}, f"k{i}", f"durable {i}") for i in range(3)]
    print(json.dumps({"sent": sent}))
    sys.stdout.flush()
    # The test kills the relay now; stay connected until it does.
    try:
        await alice.closed(timeout=30)
    except Exception:
        pass


async def kill9_receive():
    want = json.loads(ARGS.expect)
    alice = await Client.connect("alice")
    # A retry of a message sent before the crash is answered with the same id, and is not
    # delivered twice.
    again = await alice.send_message({"user": "bob"}, "k0", "durable 0")
    check(again == want[0], f"retry after restart: {again} vs {want[0]}")
    bob = await Client.connect("bob")
    got = await bob.messages(len(want))
    check([m["msg"] for m in got] == want, f"after restart {got} vs {want}")
    check([m["body"] for m in got] == [f"durable {i}" for i in range(3)], "bodies")
    await bob.quiet()
    print(json.dumps({"ok": True}))


async def status_of(url):
    try:
        ws = await websockets.connect(url, open_timeout=5)
    except websockets.InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return 101


async def bad_input():
    # Tokens are checked before the upgrade.
    statuses = {
        "missing": await status_of(f"{ARGS.url}/ws"),
        "garbage": await status_of(ws_url("not-a-token")),
        "expired": await status_of(ws_url(token("alice", exp=int(time.time()) - 10))),
        "bad_hmac": await status_of(ws_url(token("alice", key="ff" * 32))),
        "unknown_kid": await status_of(ws_url(token("alice", kid="k9"))),
        "other_acl": await status_of(ws_url(token("alice", acl="/v/*"))),
        "forever": await status_of(ws_url(token("alice", exp=2**64 - 1))),
        "bad_device": await status_of(ws_url(token("alice"), device="no/slash")),
        "good": await status_of(ws_url(token("alice"))),
    }
    want = {"missing": 401, "garbage": 401, "expired": 403, "bad_hmac": 403,
            "unknown_kid": 403, "other_acl": 403, "forever": 403, "bad_device": 400, "good": 101}
    check(statuses == want, f"statuses {statuses}")
    c = await Client.connect("alice")
    for frame, code in [
        ("{not json", "bad_json"),
        ('{"type":"dance"}', "unknown_type"),
        ('["send"]', "bad_frame"),
        ('{"type":"send","id":"a"}', "bad_frame"),
        ('{"type":"send","id":"a","to":{"user":"bob"}}', "bad_frame"),
        ('{"type":"send","id":"a","to":{"user":"b/ob"},"body":"x"}', "bad_frame"),
        ('{"type":"ack","ids":"nope"}', "bad_frame"),
        ('{"type":"history","conversation":"nowhere"}', "bad_frame"),
        ('{"type":"room.join","room":"r/1"}', "bad_frame"),
        ('{"type":"send","id":"a","to":{"room":"r1"},"body":"x"}', "not_member"),
        ('{"type":"room.leave","room":"r1"}', "not_member"),
        ('{"type":"typing","to":{"room":"r1"}}', "unsupported"),
        ('{"type":"history","conversation":"room:r1","before":null}', "not_stored"),
        ('{"type":"media.upload","mime":"image/jpeg","size":1}', "unsupported"),
    ]:
        await c.ws.send(frame)
        e = await c.next("error")
        check(e["code"] == code and e["message"], f"{frame}: {e}")
    await c.ws.send(b"\x00\x01binary")
    check((await c.next("error"))["code"] == "bad_frame", "binary")
    # Sending to a group one is not in.
    bob = await Client.connect("bob")
    await bob.send({"type": "group.create", "group": "bobs", "members": ["carol"]})
    await bob.next("group")
    await c.send({"type": "send", "id": "g", "to": {"group": "bobs"}, "body": "let me in"})
    e = await c.next("error")
    check(e["code"] == "not_member" and e["id"] == "g", f"{e}")
    await c.send({"type": "send", "id": "n", "to": {"group": "nogroup"}, "body": "x"})
    check((await c.next("error"))["code"] == "no_such_group", "no such group")
    await c.send({"type": "ping"})
    await c.next("pong")
    # An oversized frame closes with 1009.
    await c.send({"type": "send", "id": "big", "to": {"user": "bob"}, "body": "x" * (70 * 1024)})
    code, reason = await c.closed()
    check(code == 1009, f"oversized: {code} {reason}")
    # A flood: refused frames get error frames, then the connection is closed with 1008.
    f = await Client.connect("flooder")
    for _ in range(300):
        try:
            await f.send({"type": "ping"})
        except websockets.ConnectionClosed:
            break
    kinds = {}
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(f.ws.recv(), 5))
            key = frame.get("code", frame["type"])
            kinds[key] = kinds.get(key, 0) + 1
    except websockets.ConnectionClosed as e:
        check(e.rcvd is not None and e.rcvd.code == 1008, f"flood close {e.rcvd}")
    check(kinds.get("pong", 0) >= 30 and kinds.get("rate_limited", 0) >= 1, f"flood frames {kinds}")
    # The relay is still there for everyone else.
    await bob.send({"type": "ping"})
    await bob.next("pong")
    print(json.dumps({"ok": True, "flood": kinds}))


async def raw_ws(user, rcvbuf=None):
    """A WebSocket opened by hand on a bare socket (optionally with a small receive buffer),
    so that the test decides when it is read: (reader, writer) after the 101."""
    host, port = ARGS.url.removeprefix("ws://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    path = "/ws?" + urllib.parse.urlencode({"token": token(user)})
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    check(head.startswith(b"HTTP/1.1 101"), f"handshake {head[:40]}")
    return reader, writer


def raw_send(writer, obj):
    """Writes a masked text frame (clients must mask)."""
    data = json.dumps(obj).encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
    writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


async def raw_frames(reader, timeout):
    """Yields (opcode, payload) of the relay's frames (unmasked, unfragmented)."""
    while True:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        yield b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), timeout)


async def idle():
    # A live client answers the relay's pings (websockets does) and stays.
    live = await Client.connect("alice")
    # A dead one: a bare socket that completes the handshake, then never answers.
    reader, writer = await raw_ws("bob")
    t0 = time.monotonic()
    opcodes = []
    async for opcode, payload in raw_frames(reader, 10):
        opcodes.append(opcode)
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big")
            break
    waited = time.monotonic() - t0
    check(0x9 in opcodes and code == 4001, f"opcodes {opcodes}, close {code}")
    check(0.9 < waited < 5, f"closed after {waited:.1f}s")
    writer.close()
    await live.send({"type": "ping"})
    await live.next("pong")
    print(json.dumps({"ok": True, "closed_after": waited}))


async def drain():
    c = await Client.connect("alice")
    await c.send({"type": "ping"})
    await c.next("pong")
    os.kill(ARGS.pid, signal.SIGTERM)
    code, reason = await c.closed()
    check(code == 1001, f"drain close {code} {reason}")
    print(json.dumps({"ok": True, "reason": reason}))


async def metric(name):
    """A metric of the relay, read from its /metrics (summed over label sets)."""
    host, port = ARGS.url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    check(values, f"metric {name} missing")
    return sum(values)


async def room():
    """A live room: ARGS.members connections join; one of them stops reading and is closed
    with 4002 for it, while every other member keeps receiving every message in order."""
    n = ARGS.members
    host, port = ARGS.url.removeprefix("ws://").split(":")
    sem = asyncio.Semaphore(64)

    async def join(i):
        async with sem:
            c = await Client.connect(f"m{i}")
            await c.send({"type": "room.join", "room": "live"})
            f = await c.next("room", timeout=30)
            check(f["room"] == "live" and f["joined"] is True, f"join {f}")
            return c

    members = await asyncio.gather(*(join(i) for i in range(n)))
    print(f"{n} members joined", file=sys.stderr)
    # The slow reader: a bare socket with a small receive buffer that stops reading.
    slow_reader, slow_writer = await raw_ws("slow", rcvbuf=4096)
    raw_send(slow_writer, {"type": "room.join", "room": "live"})
    async for opcode, payload in raw_frames(slow_reader, 10):
        f = json.loads(payload)
        check(f["type"] == "room" and f["members"] == n + 1, f"slow join {f}")
        break
    poster, readers = members[0], members[1:]
    received = [[] for _ in readers]

    async def read(k, c):
        while True:
            f = await c.next("message", timeout=30)
            check(f["conversation"] == "room:live" and f["from"] == "m0", f"room message {f}")
            received[k].append(f["msg"])
            if f["body"] == "end":
                return

    tasks = [asyncio.create_task(read(k, c)) for k, c in enumerate(readers)]
    async def read_slow():
        """The slow reader reads again: what was written before its queue overflowed, then
        the close frame with the reason."""
        got, close = 0, None
        async for opcode, payload in raw_frames(slow_reader, 10):
            if opcode == 0x8:
                close = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
                break
            got += json.loads(payload).get("type") == "message"
        return got, close

    body = "x" * ARGS.body
    sent, t0, dropped_after = [], time.monotonic(), None
    dropped_before = await metric("estuary_chat_relay_slow_readers_closed_total")
    while len(sent) < 5000:
        last = dropped_after is not None and len(sent) >= dropped_after + 20
        msg = await poster.send_message({"room": "live"}, f"p{len(sent)}", "end" if last else body)
        sent.append(msg)
        # Lockstep: every healthy member has it before the next one goes.
        while min(len(r) for r in received) < len(sent):
            await asyncio.sleep(0.002)
        if last:
            break
        if dropped_after is None and len(sent) % 5 == 0 and await metric(
                "estuary_chat_relay_slow_readers_closed_total") > dropped_before:
            dropped_after = len(sent)
            slow_task = asyncio.create_task(read_slow())
        if len(sent) % 20 == 0:
            print(f"{len(sent)} messages, slow reader dropped after {dropped_after}", file=sys.stderr)
    check(dropped_after is not None, f"the slow reader was never dropped ({len(sent)} messages)")
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    for k, r in enumerate(received):
        check(r == sent, f"member m{k + 1} got {len(r)} of {len(sent)} messages or out of order")
    got, close = await slow_task
    check(close is not None and close[0] == 4002 and "too slow" in close[1],
          f"slow reader closed with {close}")
    slow_writer.close()
    check(got < dropped_after, f"the slow reader got {got} of {dropped_after} messages")
    # The relay forgets the dropped member once its connection has ended.
    deadline = time.monotonic() + 10
    while (members_now := await metric("estuary_chat_relay_room_members")) != n:
        check(time.monotonic() < deadline, f"room members after the drop: {members_now}")
        await asyncio.sleep(0.05)
    print(json.dumps({"ok": True, "members": n, "messages": len(sent),
                      "dropped_after": dropped_after, "slow_got": got,
                      "seconds": round(elapsed, 2)}))


async def cluster():
    """Two relays on one NATS JetStream log: alice on the first, bob and carol on the
    second; messages, receipts and a group cross relays; the second relay is killed with
    kill -9 (ARGS.pid) mid-conversation, and bob, reconnecting to the first, gets exactly what
    he had not acked, while nothing any relay acknowledged is lost."""
    a, b = ARGS.url, ARGS.url2
    alice = await Client.connect("alice", url=a)
    bob = await Client.connect("bob", url=b)
    carol = await Client.connect("carol", url=b)
    m1 = await three_ticks(alice, bob, "a1", "one")
    # Presence and typing cross relays.
    await alice.send({"type": "presence.subscribe", "users": ["dave"]})
    p = await alice.next("presence")
    check(p["user"] == "dave" and p["online"] is False, f"presence before {p}")
    dave = await Client.connect("dave", url=b)
    p = await alice.next("presence")
    check(p["user"] == "dave" and p["online"] is True, f"presence across {p}")
    await dave.send({"type": "typing", "to": {"user": "alice"}})
    t = await alice.next("typing")
    check(t == {"type": "typing", "from": "dave", "conversation": "user:dave"}, f"typing {t}")
    # A live room with members on both relays.
    for c in (alice, carol):
        await c.send({"type": "room.join", "room": "live"})
        await c.next("room")
    await carol.send({"type": "send", "id": "r1", "to": {"room": "live"}, "body": "goal"})
    await carol.next("sent")
    got = await alice.next("message")
    check(got["conversation"] == "room:live" and got["from"] == "carol", f"room across {got}")
    # A group made on one relay, used from the other.
    await alice.send({"type": "group.create", "group": "g1", "members": ["bob", "carol"]})
    await alice.next("group")
    g = await carol.send_message({"group": "g1"}, "c1", "hello group")
    for c in (alice, bob):
        got = await c.next("message")
        check(got["msg"] == g and got["conversation"] == "group:g1", f"group {c.user} {got}")
    await bob.ack([g])
    r = await carol.next("receipt")
    check(r["msg"] == g and r["by"] == "bob" and r["state"] == "delivered", f"group receipt {r}")
    m2 = await alice.send_message({"user": "bob"}, "a2", "two")
    m3 = await alice.send_message({"user": "bob"}, "a3", "three")
    got = [(await bob.next("message"))["msg"] for _ in range(2)]
    check(got == [m2, m3], f"bob got {got}, wanted {[m2, m3]}")
    await bob.ack([m2])
    r = await alice.next("receipt")
    check(r["msg"] == m2 and r["state"] == "delivered", f"receipt m2 {r}")
    # Bob's own message is acknowledged by his relay just before it dies.
    b1 = await bob.send_message({"user": "alice"}, "b1", "from bob")
    os.kill(ARGS.pid, signal.SIGKILL)
    got = await alice.next("message", timeout=10)
    check(got["msg"] == b1 and got["body"] == "from bob", f"bob's last {got}")
    # The dead relay falls silent: its users go offline for everyone.
    p = await alice.next("presence", timeout=15)
    check(p["user"] == "dave" and p["online"] is False, f"presence after the kill {p}")
    m4 = await alice.send_message({"user": "bob"}, "a4", "four")
    # Bob comes back through the surviving relay: m3 (never acked) and m4, nothing twice.
    bob2 = await Client.connect("bob", url=a)
    got = await bob2.messages(2)
    check([m["msg"] for m in got] == [m3, m4], f"after the kill bob got {got}, wanted {[m3, m4]}")
    await bob2.quiet()
    await bob2.ack([m3, m4])
    receipts = sorted([(await alice.next("receipt"))["msg"] for _ in range(2)])
    check(receipts == sorted([m3, m4]), f"receipts after the kill {receipts}")
    # A retry of bob's message through the other relay is the same message.
    again = await bob2.send_message({"user": "alice"}, "b1", "from bob")
    check(again == b1, f"retry {again} vs {b1}")
    await alice.quiet()
    await alice.send({"type": "history", "conversation": "user:bob", "before": None, "limit": 50})
    h = await alice.next("history")
    check([x["msg"] for x in h["messages"]] == [m1, m2, m3, b1, m4], f"history {h}")
    print(json.dumps({"ok": True, "messages": [m1, g, m2, m3, b1, m4]}))


async def cluster_rejoin():
    """After `cluster`: the second relay, restarted on its store, has caught up (the group's
    history) and follows the log (a message from the first relay reaches it live)."""
    carol = await Client.connect("carol", url=ARGS.url2)
    await carol.send({"type": "history", "conversation": "group:g1", "before": None, "limit": 50})
    h = await carol.next("history")
    check([m["body"] for m in h["messages"]] == ["hello group"], f"group history {h}")
    # A new device of alice's: its inbox starts empty.
    alice = await Client.connect("alice", device="second")
    m = await alice.send_message({"user": "carol"}, "a5", "welcome back")
    got = await carol.next("message")
    check(got["msg"] == m and got["body"] == "welcome back", f"after the restart {got}")
    await carol.ack([m])
    r = await alice.next("receipt")
    check(r["msg"] == m and r["by"] == "carol", f"receipt after the restart {r}")
    print(json.dumps({"ok": True}))


async def push():
    """The offline push hook: a webhook (served here on ARGS.webhook_port) gets an event for
    each recipient with no device connected, carrying no body, with the relay's bearer token;
    its first answer is a 503, which the relay retries."""
    events, answered = asyncio.Queue(), []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status = "503 Service Unavailable" if not answered else "204 No Content"
        answered.append(status)
        if status.startswith("204"):
            await events.put((lines[0], headers, json.loads(body)))
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", ARGS.webhook_port)
    alice = await Client.connect("alice")
    m1 = await alice.send_message({"user": "bob"}, "p1", "secret body")
    line, headers, event = await asyncio.wait_for(events.get(), 10)
    check(line.startswith("POST /push "), f"request line {line}")
    check(headers.get("authorization") == "Bearer push-secret", f"headers {headers}")
    check(event == {"type": "message", "user": "bob", "msg": m1, "from": "alice",
                    "conversation": "user:alice", "ts": event["ts"], "relay": "relay-test"},
          f"event {event}")
    check("secret body" not in json.dumps(event), "the body stays out of push events")
    check(answered[0].startswith("503"), f"answers {answered}")
    # Bob online: no push for him.
    bob = await Client.connect("bob")
    await bob.next("message")
    await alice.send_message({"user": "bob"}, "p2", "hi")
    await bob.next("message")
    # A group: only the member with no device connected (carol) gets a push.
    await alice.send({"type": "group.create", "group": "g", "members": ["bob", "carol"]})
    await alice.next("group")
    g = await alice.send_message({"group": "g"}, "p3", "all")
    await bob.next("message")
    _, _, event = await asyncio.wait_for(events.get(), 10)
    check(event["user"] == "carol" and event["msg"] == g and event["conversation"] == "group:g",
          f"group event {event}")
    await asyncio.sleep(0.5)
    check(events.empty(), "no push for a user who is online")
    server.close()
    print(json.dumps({"ok": True, "requests": len(answered)}))


def http(method, url, headers=None, body=None, timeout=10):
    """A plain HTTP request (urllib): (status, lower-case headers, body); never raises for a
    status."""
    import urllib.request
    import urllib.error
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def tus_create(ticket, length=None, asset=None):
    """POST the creation request a media.upload ticket describes (optionally lying about the
    length or the asset); (status, absolute upload URL or None, body)."""
    import base64
    headers = dict(ticket["headers"])
    if length is not None:
        headers["Upload-Length"] = str(length)
    if asset is not None:
        headers["Upload-Metadata"] = (
            "filename " + base64.b64encode(b"x.jpg").decode()
            + ",asset " + base64.b64encode(asset.encode()).decode())
    status, h, body = http("POST", ticket["url"], headers, b"")
    location = h.get("location")
    return status, (urllib.parse.urljoin(ticket["url"], location) if location else None), body


def tus_patch(ticket, upload_url, data, offset=0):
    headers = {
        "Authorization": ticket["headers"]["Authorization"],
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    status, _, _ = http("PATCH", upload_url, headers, data)
    return status


async def asset_state(ticket, asset, want, timeout=30):
    """Polls the origin's status of `asset` with the ticket's credential until it is in a
    state of `want`."""
    status_url = urllib.parse.urljoin(ticket["url"], f"/v1/assets/{asset}")
    headers = {"Authorization": ticket["headers"]["Authorization"]}
    deadline = time.time() + timeout
    while True:
        status, _, body = http("GET", status_url, headers)
        check(status == 200, f"asset status {status} {body!r}")
        a = json.loads(body)
        if a["state"] in want:
            return a
        if time.time() > deadline:
            fail(f"asset {asset} still {a}")
        await asyncio.sleep(0.2)


def asset_of(media_url):
    return urllib.parse.urlsplit(media_url).path.split("/")[2]


async def ask_upload(client, cid, mime, size):
    await client.send({"type": "media.upload", "id": cid, "mime": mime, "size": size})
    f = await client.next()
    check(f["type"] == "media.upload" and f.get("id") == cid, f"media.upload answer {f}")
    return f["upload"], f["media"]


async def media():
    """Alice uploads a real JPEG through the TUS URL the relay hands out, waits until the
    origin published it and sends it to bob; bob fetches it from the edge with the signed
    URL his message carries. Then every way of misusing the credentials and URLs."""
    data = open(ARGS.file, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    check(data[:3] == b"\xff\xd8\xff", "the test file is a JPEG")
    alice = await Client.connect("alice", "phone")
    bob = await Client.connect("bob", "phone")
    ticket, m = await ask_upload(alice, "u1", "image/jpeg", len(data))
    check(m["mime"] == "image/jpeg" and m["size"] == len(data), f"media {m}")
    check(ticket["expires"] > time.time() * 1000, f"expires {ticket}")
    asset = asset_of(m["url"])
    check(asset.startswith("chat-"), f"asset id {asset}")
    # Before the upload the CDN has nothing there.
    status, _, _ = http("GET", m["url"])
    check(status == 404, f"before the upload the edge answers {status}")
    status, upload_url, body = tus_create(ticket)
    check(status == 201 and upload_url, f"creation {status} {body!r}")
    # The credential creates one upload: a second creation is a conflict.
    status, _, body = tus_create(ticket)
    check(status == 409, f"reused credential: {status} {body!r}")
    # A browser page may upload too: the origin answers CORS preflights of every step.
    for url, method in [(ticket["url"], "POST"), (upload_url, "PATCH")]:
        status, h, _ = http("OPTIONS", url, {"Origin": "http://chat.example",
                                             "Access-Control-Request-Method": method,
                                             "Access-Control-Request-Headers": "authorization,upload-offset"})
        check(status in (200, 204) and h.get("access-control-allow-origin") == "*"
              and method in h.get("access-control-allow-methods", "")
              and "upload-offset" in h.get("access-control-allow-headers", "").lower(),
              f"preflight of {method}: {status} {h}")
    check(tus_patch(ticket, upload_url, data) == 204, "patch")
    a = await asset_state(ticket, asset, ("ready", "failed"))
    check(a["state"] == "ready" and a.get("mime") == "image/jpeg", f"asset {a}")
    # The credential reads its status but unpublishes nothing.
    status, _, _ = http("DELETE", urllib.parse.urljoin(ticket["url"], f"/v1/assets/{asset}"),
                        {"Authorization": ticket["headers"]["Authorization"]})
    check(status == 403, f"delete with an upload credential: {status}")

    await alice.send({"type": "send", "id": "c1", "to": {"user": "bob"}, "media": m})
    sent = await alice.next("sent")
    got = await bob.next("message")
    check(got["msg"] == sent["msg"] and "body" not in got, f"message {got}")
    gm = got["media"]
    check(gm["mime"] == "image/jpeg" and gm["size"] == len(data), f"media {gm}")
    check(urllib.parse.urlsplit(gm["url"]).path == f"/v/{asset}/media.jpg", f"url {gm}")
    status, h, body = http("GET", gm["url"])
    check(status == 200, f"edge {status} {body[:200]!r}")
    check(hashlib.sha256(body).hexdigest() == digest, "the edge served other bytes")
    check(h.get("content-type") == "image/jpeg", f"content-type {h.get('content-type')}")
    # A second fetch is a cache hit of the same verified bytes.
    status, h, body = http("GET", gm["url"])
    check(status == 200 and hashlib.sha256(body).hexdigest() == digest, "second fetch")
    # Without its token, or for another path, the URL is refused.
    bare = gm["url"].split("?")[0]
    status, _, _ = http("GET", bare)
    check(status == 403, f"without the token: {status}")
    other = gm["url"].replace(f"/v/{asset}/", "/v/premium/")
    status, _, _ = http("GET", other)
    check(status == 403, f"the token on another asset: {status}")
    # History signs the same file again.
    await bob.send({"type": "history", "conversation": "user:alice", "before": None, "limit": 10})
    hist = await bob.next("history")
    hm = hist["messages"][-1]["media"]
    status, _, body = http("GET", hm["url"])
    check(status == 200 and hashlib.sha256(body).hexdigest() == digest, "history url")

    # A URL the relay did not issue: refused, whatever its host.
    forged = asset[:-1] + ("1" if asset[-1] == "0" else "0")
    for url in ["http://cdn.invalid/v/premium/master.m3u8", bare.replace(asset, forged),
                bare.replace("media.jpg", "media.png")]:
        await alice.send({"type": "send", "id": "c2", "to": {"user": "bob"},
                          "media": {"url": url, "mime": "image/jpeg", "size": len(data)}})
        e = await alice.next("error")
        check(e["code"] == "bad_media" and e.get("id") == "c2", f"{url}: {e}")
    # The size or type a message claims must be the ones uploaded.
    await alice.send({"type": "send", "id": "c3", "to": {"user": "bob"},
                      "media": dict(m, size=len(data) + 1)})
    e = await alice.next("error")
    check(e["code"] == "bad_media" and e.get("id") == "c3", f"size lie: {e}")
    # media.upload of a type not allowed, or of no or too many bytes.
    for mime, size in [("text/html", 10), ("image/jpeg", 0), ("image/jpeg", ARGS.max_size + 1)]:
        await alice.send({"type": "media.upload", "id": "u9", "mime": mime, "size": size})
        e = await alice.next("error")
        check(e["code"] == "bad_media" and e.get("id") == "u9", f"{mime} {size}: {e}")

    # An upload larger than declared: refused at creation and past the length.
    ticket2, m2 = await ask_upload(alice, "u2", "image/jpeg", len(data))
    status, _, body = tus_create(ticket2, length=len(data) + 1)
    check(status == 413, f"creation larger than declared: {status} {body!r}")
    # A credential for asset A names asset B: refused.
    ticket3, m3 = await ask_upload(alice, "u3", "image/jpeg", len(data))
    status, _, body = tus_create(ticket3, asset=asset_of(m2["url"]))
    check(status == 403, f"credential of another asset: {status} {body!r}")
    status, _, body = tus_create(ticket3, asset=asset)
    check(status == 403, f"credential used on a published asset: {status} {body!r}")
    status, up2, _ = tus_create(ticket2)
    check(status == 201, "creation of the declared size")
    status = tus_patch(ticket2, up2, data + b"extra")
    check(status == 413, f"a body past the declared length: {status}")
    # Bytes that are not the declared type: the asset fails, nothing is served.
    ticket4, m4 = await ask_upload(alice, "u4", "image/png", len(data))
    status, up4, _ = tus_create(ticket4)
    check(status == 201, "png creation")
    check(tus_patch(ticket4, up4, data) == 204, "png patch")
    a4 = await asset_state(ticket4, asset_of(m4["url"]), ("ready", "failed"))
    check(a4["state"] == "failed" and "image/png" in a4.get("error", ""), f"not a png: {a4}")
    status, _, _ = http("GET", m4["url"])
    check(status == 404, f"a failed asset is served by the edge: {status}")
    status, _, _ = http("GET", urllib.parse.urljoin(ticket4["url"], f"/v/{asset_of(m4['url'])}/media.png"))
    check(status == 404, f"a failed asset is served by the origin: {status}")
    # An expired credential (minted here with the shared upload key, as a relay would).
    if ARGS.upload_key:
        raw = urllib.parse.unquote(ticket3["headers"]["Authorization"].split(" ", 1)[1])
        fields = dict(f.split("=", 1) for f in raw.split("~"))
        text = f"exp={int(time.time()) - 5}~acl={fields['acl']}~kid={fields['kid']}"
        mac = hmac.new(bytes.fromhex(ARGS.upload_key), text.encode(), hashlib.sha256).hexdigest()
        expired = dict(ticket3, headers=dict(ticket3["headers"], Authorization=f"Bearer {text}~hmac={mac}"))
        status, _, body = tus_create(expired)
        check(status in (401, 403), f"expired credential: {status} {body!r}")
        # The same credential with a fresh exp works: the refusal was the expiry.
        text = f"exp={int(time.time()) + 60}~acl={fields['acl']}~kid={fields['kid']}"
        mac = hmac.new(bytes.fromhex(ARGS.upload_key), text.encode(), hashlib.sha256).hexdigest()
        fresh = dict(ticket3, headers=dict(ticket3["headers"], Authorization=f"Bearer {text}~hmac={mac}"))
        status, _, body = tus_create(fresh)
        check(status == 201, f"fresh credential: {status} {body!r}")
    print(json.dumps({"ok": True, "asset": asset, "bytes": len(data)}))


SCENARIOS = {
    "online": online,
    "offline": offline,
    "multi-device": multi_device,
    "group": group,
    "reconnect": reconnect,
    "kill9-send": kill9_send,
    "kill9-receive": kill9_receive,
    "bad-input": bad_input,
    "drain": drain,
    "idle": idle,
    "room": room,
    "cluster": cluster,
    "cluster-rejoin": cluster_rejoin,
    "push": push,
    "media": media,
}


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--kid", default="k1")
    p.add_argument("--expect", default="[]")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--url2")
    p.add_argument("--webhook-port", type=int, default=0)
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--body", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--file")
    p.add_argument("--upload-key")
    p.add_argument("--max-size", type=int, default=16 << 20)
    ARGS = p.parse_args()
    asyncio.run(asyncio.wait_for(SCENARIOS[ARGS.scenario](), ARGS.timeout))


if __name__ == "__main__":
    main()
