#!/usr/bin/env python3
"""WHIP publisher and WHEP watcher for the SFU tests, on aiortc (a WebRTC stack of its own).

  whip_whep.py publish --url http://127.0.0.1:PORT --room R --token T --seconds S [--codec vp8|h264]
  whip_whep.py watch   --url ... --room R --token T --seconds S
  whip_whep.py pair    --url ... --room R --token T --seconds S [--codec ...] [--watch-codec ...]
                       [--watchers N] [--watch-first]
      (a publisher and N watchers at once; the watchers join after the publisher, one second
      apart, or before it with --watch-first, and offer only --watch-codec, by default the
      publisher's)

Each prints one JSON line: the HTTP status, the Location, and for a watcher the number of
decoded video frames and audio frames it received (decoded by aiortc: counts prove media
arrived intact), the decoded frame size and the video codec negotiated. With --delete, the
session is ended with DELETE on its Location before the peer connection is closed, and the
DELETE status is reported too.

aiortc_loopback.py makes aiortc gather 127.0.0.1; no STUN server is given.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request

import aiortc_loopback  # noqa: F401 (patches aioice and aiortc for these tests)

from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack  # noqa: E402


def http(method, url, token, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    req = urllib.request.Request(
        url, data=body.encode() if body is not None else None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.headers.get("Location"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read().decode()


def answer_video_codec(sdp):
    """The first codec of the answer's video m-line (the one the SFU will send)."""
    pt = None
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            pt = line.split()[3]
        elif pt and line.startswith(f"a=rtpmap:{pt} "):
            return line.split()[1].split("/")[0]
    return None


def prefer(transceiver, codec):
    """Offers only `codec` (vp8 or h264) on a video transceiver (with its RTX)."""
    mime = {"vp8": "video/VP8", "h264": "video/H264"}[codec]
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences(
        [c for c in caps if c.mimeType == mime or c.mimeType == "video/rtx"]
    )


def pc():
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def connect(peer, base, path, token):
    await peer.setLocalDescription(await peer.createOffer())
    status, location, answer = await asyncio.to_thread(
        http, "POST", f"{base}{path}", token, peer.localDescription.sdp
    )
    if status != 201:
        raise SystemExit(json.dumps({"status": status, "body": answer}))
    await peer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return status, location


async def end(peer, base, location, token, delete):
    result = {}
    if delete and location:
        status, _, _ = await asyncio.to_thread(http, "DELETE", f"{base}{location}", token)
        result["delete"] = status
    await peer.close()
    return result


def tracks(source):
    """The publisher's audio and video: aiortc's own (a flat frame, one small packet each,
    and silence), or FFmpeg's moving test pattern and a sine tone through PyAV (frames of
    many packets, keyframes of tens of kilobytes)."""
    if source == "testsrc":
        from aiortc.contrib.media import MediaPlayer

        video = MediaPlayer("testsrc=size=640x480:rate=30", format="lavfi").video
        audio = MediaPlayer("sine=frequency=440:sample_rate=48000", format="lavfi").audio
        return audio, video
    return AudioStreamTrack(), VideoStreamTrack()


async def publish(base, room, token, seconds, codec, delete=False, started=None, source="flat"):
    peer = pc()
    audio_track, video_track = tracks(source)
    peer.addTransceiver(audio_track, direction="sendonly")
    video = peer.addTransceiver(video_track, direction="sendonly")
    prefer(video, codec)
    status, location = await connect(peer, base, f"/whip/{room}", token)
    if started is not None:
        started.set()
    await asyncio.sleep(seconds)
    out = {"role": "publisher", "status": status, "location": location}
    out.update(await end(peer, base, location, token, delete))
    return out


async def watch(base, room, token, seconds, codec=None, delete=False):
    peer = pc()
    peer.addTransceiver("audio", direction="recvonly")
    video = peer.addTransceiver("video", direction="recvonly")
    if codec:
        # Offer only this codec: frames decoded prove the SFU sent it.
        prefer(video, codec)
    counts = {"video": 0, "audio": 0}
    size = {}

    @peer.on("track")
    def on_track(track):
        async def pump():
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                counts[track.kind] += 1
                if track.kind == "video":
                    size["width"], size["height"] = frame.width, frame.height

        asyncio.ensure_future(pump())

    status, location = await connect(peer, base, f"/whep/{room}", token)
    await asyncio.sleep(seconds)
    codec = answer_video_codec(peer.remoteDescription.sdp)
    out = {
        "role": "watcher",
        "status": status,
        "location": location,
        "video_frames": counts["video"],
        "audio_frames": counts["audio"],
        "codec": codec,
        **size,
    }
    out.update(await end(peer, base, location, token, delete))
    return out


async def pair(base, room, token, seconds, codec, watch_codec, delete, watchers, watch_first,
               source="flat"):
    """A publisher and `watchers` watchers in one room. By default the publisher comes first
    and the watchers join one second apart (later ones need a keyframe the SFU asks for);
    with watch_first the watchers are there two seconds before the publisher."""
    started = asyncio.Event()
    views = []
    if watch_first:
        views = [
            asyncio.ensure_future(
                watch(base, room, token, seconds + 2, codec=watch_codec, delete=delete)
            )
            for _ in range(watchers)
        ]
        await asyncio.sleep(2)
    pub = asyncio.ensure_future(
        publish(base, room, token, seconds + watchers, codec, delete=delete, started=started,
                source=source)
    )
    await started.wait()
    if not watch_first:
        for i in range(watchers):
            views.append(
                asyncio.ensure_future(
                    watch(base, room, token, seconds, codec=watch_codec, delete=delete)
                )
            )
            if i + 1 < watchers:
                await asyncio.sleep(1)
    subs = [await v for v in views]
    return {"publisher": await pub, "watcher": subs[0], "watchers": subs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["publish", "watch", "pair"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    ap.add_argument("--watch-codec", choices=["vp8", "h264"], default=None,
                    help="pair: the only video codec the watcher offers (default: --codec)")
    ap.add_argument("--delete", action="store_true")
    ap.add_argument("--watchers", type=int, default=1, help="pair: how many watchers")
    ap.add_argument("--source", choices=["flat", "testsrc"], default="flat",
                    help="what the publisher sends: aiortc's flat frame, or FFmpeg's testsrc")
    ap.add_argument("--watch-first", action="store_true",
                    help="pair: the watchers join before the publisher")
    a = ap.parse_args()
    if a.mode == "publish":
        out = publish(a.url, a.room, a.token, a.seconds, a.codec, a.delete, source=a.source)
    elif a.mode == "watch":
        out = watch(a.url, a.room, a.token, a.seconds, a.codec, a.delete)
    else:
        out = pair(a.url, a.room, a.token, a.seconds, a.codec, a.watch_codec or a.codec,
                   a.delete, a.watchers, a.watch_first, a.source)
    print(json.dumps(asyncio.run(out)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
