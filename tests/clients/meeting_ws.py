"""Bad input on the SFU's meeting WebSocket (`/rooms/<room>/ws`), from an independent client
(the `websockets` library).

    python3 meeting_ws.py --url ws://127.0.0.1:PORT --room r1 --token TOKEN

Each case runs on its own connection and records what the SFU did: the error frames it sent
(by code) and how the connection ended (close code). Prints one JSON line.
"""
import argparse
import asyncio
import json

import websockets


async def case(url, frames, read=1, join=True, pause=0.0):
    """Sends `join` (if asked), then `frames`; reads up to `read` frames after each; returns
    {"got": [messages], "close": code or None}."""
    got = []
    close = None
    try:
        async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
            if join:
                await ws.send(json.dumps({"type": "join", "name": "tester"}))
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            for f in frames:
                await ws.send(f)
                for _ in range(read):
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            if not join:
                return {"got": got, "close": close}
            await asyncio.sleep(pause)
            # Then a ping: everything up to its pong (or the close) is recorded.
            try:
                await ws.send(json.dumps({"type": "ping"}))
            except websockets.ConnectionClosed:
                pass
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 5))
                got.append(m)
                if m.get("type") == "pong":
                    break
    except websockets.ConnectionClosed as e:
        close = e.rcvd.code if e.rcvd else None
    except asyncio.TimeoutError:
        close = "timeout"
    return {"got": got, "close": close}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--token", required=True)
    a = ap.parse_args()
    url = f"{a.url}/rooms/{a.room}/ws?token={a.token}"
    out = {}
    out["garbage"] = await case(url, ["{not json", "\x00\xff", "[]"])
    out["unknown_type"] = await case(url, [json.dumps({"type": "dance"})])
    out["extra_field"] = await case(url, [json.dumps({"type": "ping", "x": 1})])
    out["before_join"] = await case(url, [json.dumps({"type": "ping"})], read=1, join=False)
    out["garbage_sdp"] = await case(url, [json.dumps({"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\n"})])
    out["answer_unasked"] = await case(url, [json.dumps({"type": "answer", "sdp": "v=0\r\n"})])
    out["mute_other"] = await case(url, [json.dumps({"type": "mute", "track": "p999999-1", "muted": True})])
    out["join_twice"] = await case(url, [json.dumps({"type": "join", "name": "again"})])
    # Only a cascade link may announce another site's participants.
    out["relay_from_participant"] = await case(
        url, [json.dumps({"type": "relay", "event": "joined", "participant": "p1", "name": "ghost"})]
    )
    out["oversized"] = await case(url, [json.dumps({"type": "offer", "sdp": "a" * (100 * 1024)})], read=0)
    out["binary"] = await case(url, [b"\x01\x02"], read=0)
    out["flood_of_garbage"] = await case(url, ["nope"] * 6, read=0)
    # Joined, no offer yet, for longer than the SFU's connect_timeout (the test sets 1 s).
    out["slow_to_offer"] = await case(url, [], pause=2.5)
    print(json.dumps(out))


asyncio.run(main())
