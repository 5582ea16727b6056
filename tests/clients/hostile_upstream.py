"""A hostile "upstream SFU" for a cascade link, and one honest participant on the real SFU.

    python3 hostile_upstream.py --listen 127.0.0.1:PORT --sfu ws://127.0.0.1:PORT --room r1 \
        --token ROOM_TOKEN --seconds 12

The real SFU was ordered (by the test) to relay room `r1` from http://LISTEN; once the
participant joins there, the SFU opens its link here (a WebSocket at /cascade/r1/ws) and this
server abuses it, one behaviour per connection:
  1. garbage frames, a binary frame, a bogus SDP answer and offer, 300 distinct participants
     joining (1,000-character names), a `joined` naming 100 more, then all of them leaving,
     then a normal close;
  2. once the SFU has sent something, one frame larger than the SFU's 64 KiB limit;
  3. and later: silence.
The participant (the `websockets` library, no media) records what the SFU tells it and, at
the end, checks the SFU still answers a ping. Prints one JSON line.
"""
import argparse
import asyncio
import json

import websockets

connections = []


async def abuse(ws):
    n = len(connections) + 1
    seen = []
    connections.append({"path": ws.request.path, "seen": seen})
    reader = asyncio.ensure_future(read_all(ws, seen))
    try:
        if n == 1:
            for junk in ["{not json", "[]", '{"type":"joined","participants":"nope"}']:
                await ws.send(junk)
            await ws.send(b"\x00\x01\x02")
            await ws.send(json.dumps({"type": "answer", "sdp": "v=0\r\nnot sdp\r\n"}))
            await ws.send(json.dumps({"type": "offer", "sdp": "v=0\r\nnot sdp either\r\n"}))
            for i in range(300):
                await ws.send(json.dumps({
                    "type": "participant", "event": "joined",
                    "participant": f"x{i}", "name": "n" * 1000,
                }))
            await ws.send(json.dumps({
                "type": "joined", "participant": "p0",
                "participants": [{"participant": f"y{i}", "name": "y"} for i in range(100)],
                "tracks": [],
            }))
            await asyncio.sleep(1)
            for i in range(300):
                await ws.send(json.dumps({"type": "participant", "event": "left", "participant": f"x{i}"}))
            for i in range(100):
                await ws.send(json.dumps({"type": "participant", "event": "left", "participant": f"y{i}"}))
            await asyncio.sleep(0.5)
            await ws.close()
        elif n == 2:
            # After the SFU has said what it relays (so that what the link carried can be
            # checked on every connection; sent at once, its close could come first).
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            await ws.send("x" * (100 * 1024))
            await asyncio.wait_for(ws.wait_closed(), 5)
        else:
            await ws.wait_closed()
    except (websockets.ConnectionClosed, asyncio.TimeoutError):
        pass
    reader.cancel()


async def read_all(ws, seen):
    try:
        async for m in ws:
            if isinstance(m, str):
                try:
                    seen.append(json.loads(m))
                except ValueError:
                    seen.append({"type": "unreadable"})
    except websockets.ConnectionClosed:
        pass


async def participant(url, seconds):
    events = []
    pong = False
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "name": "honest"}))

        async def read():
            async for m in ws:
                events.append(json.loads(m))

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(seconds)
        await ws.send(json.dumps({"type": "ping"}))
        for _ in range(50):
            await asyncio.sleep(0.1)
            if any(e.get("type") == "pong" for e in events):
                pong = True
                break
        reader.cancel()
    return events, pong


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--sfu", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--seconds", type=float, default=12)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    async with websockets.serve(abuse, host, int(port), max_size=None):
        events, pong = await participant(f"{a.sfu}/rooms/{a.room}/ws?token={a.token}", a.seconds)
    joined = {e["participant"] for e in events if e.get("type") == "participant" and e.get("event") == "joined"}
    left = {e["participant"] for e in events if e.get("type") == "participant" and e.get("event") == "left"}
    print(json.dumps({
        "connections": [{
            "path": c["path"].split("?")[0],
            "types": [m.get("type") for m in c["seen"]][:5],
            # The participants the relaying side told this "upstream" about.
            "relayed": sorted({m.get("participant") for m in c["seen"] if m.get("type") == "relay"}),
        } for c in connections],
        "joined": sorted(joined),
        "left": sorted(left),
        "longest_name": max((len(e.get("name", "")) for e in events if e.get("type") == "participant"), default=0),
        "errors": [e for e in events if e.get("type") == "error"],
        "pong": pong,
    }), flush=True)


asyncio.run(main())
