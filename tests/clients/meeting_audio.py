"""aiortc participants on the SFU's meeting WebSocket, for loudest-N audio and mute.

    python3 meeting_audio.py loudest --url ws://127.0.0.1:PORT --room r1 --token TOKEN --seconds 4
    python3 meeting_audio.py late    --url ws://127.0.0.1:PORT --room r1 --token TOKEN --seconds 3
    python3 meeting_audio.py mute    --url ws://127.0.0.1:PORT --room r1 --token TOKEN --seconds 3

loudest: three participants publish audio only: "loud" a 440 Hz tone (FFmpeg's sine through
PyAV), "quiet" and "listener" silence (aiortc's own). Each counts the audio frames it decodes
from every other participant. With [rooms] max_audio_forwarded = 1 the listener should hear
loud only.

late: "ann" and "cid" publish a tone and video and decode each other; then "bob" joins with
audio only and should decode both videos (his connection gains two video m-lines at once).

mute: "ann" publishes a tone and video (FFmpeg's test pattern), "bob" silence. After bob
decodes both of ann's tracks, ann mutes both (the protocol's `mute`); later she unmutes them.
Bob's frame counts from ann's tracks are taken at each step: while muted they should stand
still, after the unmute grow again (video after a keyframe the SFU asks ann for).

aiortc_loopback.py makes aiortc gather 127.0.0.1 and mends a renegotiation bug of aiortc.
Prints one JSON line.
"""
import argparse
import asyncio
import json
import os

import aiortc_loopback  # noqa: F401 (patches aioice and aiortc for these tests)

import websockets  # noqa: E402
from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer  # noqa: E402
from aiortc.mediastreams import AudioStreamTrack  # noqa: E402


class Participant:
    def __init__(self, url, name, tone=False, video=False):
        self.url, self.name, self.tone, self.video = url, name, tone, video
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # Frames decoded per remote track id ("p<participant>-<n>").
        self.frames = {}
        self.tracks = {}
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
        """Answers the SFU's offers and the first answer; keeps every event."""
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
            elif m["type"] == "track" and m["event"] == "added":
                self.tracks[m["track"]] = m
            elif m["type"] == "error":
                raise RuntimeError(f"{self.name}: {m}")

    def own(self, kind):
        return [t for t, m in self.tracks.items() if m["participant"] == self.me and m["kind"] == kind]

    def of(self, other, kind=None):
        """Frames decoded from `other`'s tracks (of `kind`)."""
        return sum(
            n
            for t, n in self.frames.items()
            if t.startswith(other.me + "-")
            and (kind is None or self.tracks.get(t, {}).get("kind") == kind)
        )

    async def close(self):
        await self.pc.close()
        await self.ws.close()
        self.loop.cancel()


def fail(what, *participants):
    """Prints what went wrong and what each participant saw, and exits at once (aiortc's
    media threads would keep a normal exit waiting)."""
    print(json.dumps({"error": what, "participants": {
        p.name: {"me": getattr(p, "me", None), "frames": p.frames, "tracks": list(p.tracks)}
        for p in participants}}), flush=True)
    os._exit(1)


async def wait_for(cond, seconds, what, *participants):
    end = asyncio.get_running_loop().time() + seconds
    while not cond():
        if asyncio.get_running_loop().time() > end:
            fail(f"timed out: {what}", *participants)
        await asyncio.sleep(0.1)


async def loudest(url, seconds):
    loud = Participant(url, "loud", tone=True)
    quiet = Participant(url, "quiet")
    listener = Participant(url, "listener")
    for p in (loud, quiet, listener):
        await p.join_and_publish()
    await wait_for(lambda: listener.of(loud) > 0, 20, "the listener hears loud", loud, quiet, listener)
    start = {"loud": listener.of(loud), "quiet": listener.of(quiet)}
    await asyncio.sleep(seconds)
    out = {
        "listener_from_loud": listener.of(loud) - start["loud"],
        "listener_from_quiet": listener.of(quiet) - start["quiet"],
        "quiet_from_loud": quiet.of(loud),
        "speakers": [m["participant"] for m in listener.events if m["type"] == "speaker"],
        "loud": loud.me,
        "quiet": quiet.me,
    }
    for p in (loud, quiet, listener):
        await p.close()
    return out


async def mute(url, seconds):
    ann = Participant(url, "ann", tone=True, video=True)
    bob = Participant(url, "bob")
    await ann.join_and_publish()
    await bob.join_and_publish()
    await wait_for(
        lambda: bob.of(ann, "audio") > 20 and bob.of(ann, "video") > 5 and len(ann.own("audio")) == 1
        and len(ann.own("video")) == 1,
        20,
        "bob decodes ann",
        ann,
        bob,
    )
    counts = lambda: {"audio": bob.of(ann, "audio"), "video": bob.of(ann, "video")}  # noqa: E731
    before = counts()
    for t in ann.own("audio") + ann.own("video"):
        await ann.ws.send(json.dumps({"type": "mute", "track": t, "muted": True}))
    # What was on its way when the mute landed is let through, then counting starts.
    await asyncio.sleep(1)
    muted_from = counts()
    await asyncio.sleep(seconds)
    muted_to = counts()
    for t in ann.own("audio") + ann.own("video"):
        await ann.ws.send(json.dumps({"type": "mute", "track": t, "muted": False}))
    await asyncio.sleep(seconds)
    after = counts()
    told = [m for m in bob.events if m["type"] == "track" and m["event"] in ("muted", "unmuted")]
    out = {
        "before": before,
        "muted_from": muted_from,
        "muted_to": muted_to,
        "after": after,
        "bob_told": [m["event"] + ":" + m["kind"] for m in told],
    }
    await ann.close()
    await bob.close()
    return out


async def late(url, seconds):
    ann = Participant(url, "ann", tone=True, video=True)
    cid = Participant(url, "cid", tone=True, video=True)
    await ann.join_and_publish()
    await cid.join_and_publish()
    await wait_for(
        lambda: ann.of(cid, "video") > 5 and cid.of(ann, "video") > 5,
        20,
        "ann and cid decode each other",
        ann,
        cid,
    )
    bob = Participant(url, "bob")
    await bob.join_and_publish()
    await wait_for(
        lambda: bob.of(ann, "video") > 5 and bob.of(cid, "video") > 5,
        20,
        "bob decodes ann's and cid's video",
        ann,
        cid,
        bob,
    )
    start = {"ann": bob.of(ann, "video"), "cid": bob.of(cid, "video")}
    await asyncio.sleep(seconds)
    out = {
        "bob_from_ann": bob.of(ann, "video") - start["ann"],
        "bob_from_cid": bob.of(cid, "video") - start["cid"],
        "bob_audio": bob.of(ann, "audio") + bob.of(cid, "audio"),
    }
    for p in (ann, cid, bob):
        await p.close()
    return out


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["loudest", "mute", "late"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--seconds", type=float, default=4)
    a = ap.parse_args()
    url = f"{a.url}/rooms/{a.room}/ws?token={a.token}"
    out = await {"loudest": loudest, "mute": mute, "late": late}[a.mode](url, a.seconds)
    print(json.dumps(out), flush=True)
    # aiortc's media threads would keep a normal exit waiting.
    os._exit(0)


asyncio.run(main())
