"""A meeting across two SFUs (cascading), with aiortc participants on each SFU's meeting
WebSocket.

    python3 meeting_cascade.py --a WS_URL_WITH_TOKEN --b WS_URL_WITH_TOKEN --seconds 3

"ann" joins SFU A and publishes a tone and video (FFmpeg's sine and test pattern through
PyAV); "bob" joins SFU B with a tone and video; "cid" joins SFU B with silence and video.
(An audio-only aiortc participant that joins after two video publishers decoded no video,
on one SFU too, without cascading: a separate finding, see the issue's notes.) Each
decodes the others; every count is by the name the participant was announced with (ids
differ per SFU). Then bob mutes his video (ann should be told), and bob and cid leave (ann
should be told both left). Prints one JSON line.

aiortc_loopback.py makes aiortc gather 127.0.0.1 and mends a renegotiation bug of aiortc.
"""
import argparse
import asyncio
import json
import os

import aiortc_loopback  # noqa: F401 (patches aioice and aiortc for these tests)

import websockets  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.contrib.media import MediaPlayer  # noqa: E402
from aiortc.mediastreams import AudioStreamTrack  # noqa: E402


class Participant:
    def __init__(self, url, name, tone=False, video=False):
        self.url, self.name, self.tone, self.video = url, name, tone, video
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = {}
        self.tracks = {}
        self.names = {}
        self.events = []

        @self.pc.on("track")
        def on_track(track):
            async def pump():
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
                    self.frames[track.id] = self.frames.get(track.id, 0) + 1

            asyncio.ensure_future(pump())

    async def join_and_publish(self):
        self.ws = await websockets.connect(self.url)
        await self.ws.send(json.dumps({"type": "join", "name": self.name}))
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if m["type"] == "joined":
                self.me = m["participant"]
                for p in m["participants"]:
                    self.names[p["participant"]] = p["name"]
                for t in m["tracks"]:
                    self.tracks[t["track"]] = t
                break
        if self.tone:
            audio = MediaPlayer("sine=frequency=440:sample_rate=48000", format="lavfi").audio
        else:
            audio = AudioStreamTrack()
        self.pc.addTransceiver(audio, direction="sendonly")
        if self.video:
            video = MediaPlayer("testsrc=size=320x240:rate=15", format="lavfi").video
            self.pc.addTransceiver(video, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        self.loop = asyncio.ensure_future(self.serve())

    async def serve(self):
        while True:
            try:
                m = json.loads(await self.ws.recv())
            except Exception:
                return
            self.events.append(m)
            if m["type"] == "answer":
                await self.pc.setRemoteDescription(RTCSessionDescription(m["sdp"], "answer"))
            elif m["type"] == "offer":
                await self.pc.setRemoteDescription(RTCSessionDescription(m["sdp"], "offer"))
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.ws.send(
                    json.dumps({"type": "answer", "sdp": self.pc.localDescription.sdp})
                )
            elif m["type"] == "participant" and m["event"] == "joined":
                self.names[m["participant"]] = m["name"]
            elif m["type"] == "track" and m["event"] == "added":
                self.tracks[m["track"]] = m
            elif m["type"] == "error":
                raise RuntimeError(f"{self.name}: {m}")

    def own(self, kind):
        return [t for t, m in self.tracks.items() if m["participant"] == self.me and m["kind"] == kind]

    def of(self, name, kind=None):
        """Frames decoded from the tracks of every participant announced as `name`."""
        ids = [p for p, n in self.names.items() if n == name]
        return sum(
            n
            for t, n in self.frames.items()
            for i in ids
            if t.startswith(i + "-")
            and (kind is None or self.tracks.get(t, {}).get("kind") == kind)
        )

    def told(self, kind, event):
        return [m for m in self.events if m["type"] == kind and m.get("event") == event]

    async def close(self):
        await self.pc.close()
        await self.ws.close()
        self.loop.cancel()


def report(*participants):
    return {
        p.name: {
            "me": getattr(p, "me", None),
            "names": sorted(p.names.values()),
            "frames": p.frames,
            "tracks": list(p.tracks),
        }
        for p in participants
    }


def fail(what, *participants):
    print(json.dumps({"error": what, "participants": report(*participants)}), flush=True)
    os._exit(1)


async def wait_for(cond, seconds, what, *participants):
    end = asyncio.get_running_loop().time() + seconds
    while not cond():
        if asyncio.get_running_loop().time() > end:
            fail(f"timed out: {what}", *participants)
        await asyncio.sleep(0.1)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--seconds", type=float, default=3)
    a = ap.parse_args()
    ann = Participant(a.a, "ann", tone=True, video=True)
    bob = Participant(a.b, "bob", tone=True, video=True)
    cid = Participant(a.b, "cid", video=True)
    everyone = (ann, bob, cid)
    for p in everyone:
        await p.join_and_publish()
    await wait_for(
        lambda: bob.of("ann", "audio") > 20 and bob.of("ann", "video") > 5
        and cid.of("ann", "video") > 5 and ann.of("bob", "audio") > 20
        and ann.of("bob", "video") > 5 and ann.of("cid", "audio") > 20,
        40,
        "everyone decodes everyone across the two SFUs",
        *everyone,
    )
    start = {p.name: dict(p.frames) for p in everyone}
    await asyncio.sleep(a.seconds)
    counts = {
        "bob_from_ann": {k: bob.of("ann", k) for k in ("audio", "video")},
        "cid_from_ann": {k: cid.of("ann", k) for k in ("audio", "video")},
        "ann_from_bob": {k: ann.of("bob", k) for k in ("audio", "video")},
        "ann_from_cid": {k: ann.of("cid", k) for k in ("audio", "video")},
        "bob_from_cid": {k: bob.of("cid", k) for k in ("audio", "video")},
    }
    grew = {p.name: sum(p.frames.values()) - sum(start[p.name].values()) for p in everyone}
    # bob mutes his video: ann, on the other SFU, is told.
    for t in bob.own("video"):
        await bob.ws.send(json.dumps({"type": "mute", "track": t, "muted": True}))
    await wait_for(lambda: ann.told("track", "muted"), 10, "ann told of bob's mute", *everyone)
    ann_muted = [m["kind"] for m in ann.told("track", "muted")]
    # bob and cid leave: ann is told both left.
    await bob.close()
    await cid.close()
    await wait_for(
        lambda: len(ann.told("participant", "left")) >= 2, 15, "ann told bob and cid left", *everyone
    )
    out = {
        "counts": counts,
        "grew": grew,
        "ann_muted": ann_muted,
        "left": sorted(m["name"] for m in ann.told("participant", "left")),
        "participants": report(*everyone),
    }
    print(json.dumps(out), flush=True)
    await ann.close()
    os._exit(0)


asyncio.run(main())
