"""Two aiortc participants on the SFU's meeting WebSocket, one of which makes the SFU's
offer collide with its own (glare).

    python3 meeting_glare.py --url ws://127.0.0.1:PORT --room r1 --token TOKEN --seconds 4

ann joins and publishes (audio and video). bob joins and publishes; the SFU offers ann two
new m-lines for bob's tracks. ann does not answer: she offers again herself. The SFU must
answer ann's offer first, then offer its m-lines again; ann answers that one. Then each
counts the frames it decodes from the other. Prints one JSON line.
"""
import argparse
import asyncio
import json

import aiortc_loopback  # noqa: F401 (patches aioice and aiortc for these tests)

import websockets  # noqa: E402
from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack  # noqa: E402


class Participant:
    def __init__(self, url, name):
        self.url, self.name = url, name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = {"video": 0, "audio": 0}
        self.log = []

        @self.pc.on("track")
        def on_track(track):
            async def pump():
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
                    self.frames[track.kind] += 1

            asyncio.ensure_future(pump())

    async def recv(self, want):
        """The next message of type `want` (others are logged)."""
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            self.log.append(m["type"] + (":" + m["event"] if "event" in m else ""))
            if m["type"] == "error":
                raise RuntimeError(f"{self.name}: {m}")
            if m["type"] == want:
                return m

    async def join_and_publish(self):
        self.ws = await websockets.connect(self.url)
        await self.ws.send(json.dumps({"type": "join", "name": self.name}))
        self.me = (await self.recv("joined"))["participant"]
        self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        self.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await self.offer()

    async def offer(self):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        answer = await self.recv("answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def answer(self, offer):
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.ws.send(json.dumps({"type": "answer", "sdp": self.pc.localDescription.sdp}))

    async def answer_offers(self, seconds):
        """Answers every offer of the SFU for `seconds`."""
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                m = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            except asyncio.TimeoutError:
                return
            self.log.append(m["type"] + (":" + m["event"] if "event" in m else ""))
            if m["type"] == "offer":
                await self.answer(m)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--seconds", type=float, default=4)
    a = ap.parse_args()
    url = f"{a.url}/rooms/{a.room}/ws?token={a.token}"
    ann, bob = Participant(url, "ann"), Participant(url, "bob")
    await ann.join_and_publish()
    await bob.join_and_publish()
    # The SFU's offer to ann (bob's tracks), left unanswered: ann offers instead.
    ignored = await ann.recv("offer")
    await ann.offer()
    # The SFU offers again, after answering ann.
    again = await ann.recv("offer")
    await ann.answer(again)
    await asyncio.gather(ann.answer_offers(a.seconds), bob.answer_offers(a.seconds))
    out = {
        "ann": {"frames": ann.frames, "log": ann.log},
        "bob": {"frames": bob.frames, "log": bob.log},
        "offers_differ": ignored["sdp"] != again["sdp"],
        "bob_in_offer": f"msid:{bob.me} " in again["sdp"],
    }
    for p in (ann, bob):
        await p.pc.close()
        await p.ws.close()
    print(json.dumps(out))


asyncio.run(main())
