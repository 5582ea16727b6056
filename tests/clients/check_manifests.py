#!/usr/bin/env python3
"""Parses a packaged asset's manifests with independent parsers: PyPI `m3u8` for the HLS
master and media playlists, PyPI `mpegdash` for the MPD. Checks what players rely on and
prints a JSON summary; exits non-zero (with the reason on stderr) when something is wrong.

Usage: check_manifests.py ASSET_DIR
"""
import json
import os
import sys

import m3u8
from mpegdash.parser import MPEGDASHParser


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def media(asset, uri):
    pl = m3u8.load(os.path.join(asset, uri))
    if not pl.is_endlist:
        fail(f"{uri}: no EXT-X-ENDLIST")
    if pl.playlist_type != "vod":
        fail(f"{uri}: not VOD")
    if not pl.is_independent_segments:
        fail(f"{uri}: no EXT-X-INDEPENDENT-SEGMENTS")
    if not pl.segment_map or pl.segment_map[0].uri != "init.mp4":
        fail(f"{uri}: no EXT-X-MAP to init.mp4")
    base = os.path.dirname(os.path.join(asset, uri))
    for seg in pl.segments:
        if round(seg.duration) > pl.target_duration:
            fail(f"{uri}: {seg.uri} lasts {seg.duration} over the target {pl.target_duration}")
        if not os.path.isfile(os.path.join(base, seg.uri)):
            fail(f"{uri}: {seg.uri} missing")
    return {"segments": len(pl.segments), "target_duration": pl.target_duration,
            "durations": [s.duration for s in pl.segments]}


def main():
    asset = sys.argv[1]
    master = m3u8.load(os.path.join(asset, "master.m3u8"))
    if not master.is_variant:
        fail("master.m3u8 is not a master playlist")
    out = {"variants": [], "audio": [], "media": {}, "dash": {}}
    for p in master.playlists:
        si = p.stream_info
        if not si.bandwidth or not si.average_bandwidth or not si.codecs:
            fail(f"{p.uri}: BANDWIDTH, AVERAGE-BANDWIDTH and CODECS are required")
        out["variants"].append({
            "uri": p.uri, "bandwidth": si.bandwidth, "average_bandwidth": si.average_bandwidth,
            "codecs": si.codecs, "resolution": list(si.resolution) if si.resolution else None,
            "frame_rate": si.frame_rate, "audio": si.audio,
        })
        out["media"][p.uri] = media(asset, p.uri)
    for m in master.media:
        out["audio"].append({"uri": m.uri, "group_id": m.group_id, "type": m.type, "channels": m.channels})
        if m.uri:
            out["media"][m.uri] = media(asset, m.uri)

    mpd = MPEGDASHParser.parse(os.path.join(asset, "manifest.mpd"))
    if mpd.type != "static":
        fail("the MPD is not static")
    for period in mpd.periods:
        for aset in period.adaptation_sets:
            for rep in aset.representations:
                tmpl = rep.segment_templates[0] if rep.segment_templates else aset.segment_templates[0]
                n = 0
                for s in tmpl.segment_timelines[0].Ss:
                    n += 1 + (s.r or 0)
                init = tmpl.initialization
                if not os.path.isfile(os.path.join(asset, init)):
                    fail(f"MPD: {init} missing")
                for i in range(1, n + 1):
                    path = tmpl.media.replace("$Number%05d$", f"{i:05d}")
                    if not os.path.isfile(os.path.join(asset, path)):
                        fail(f"MPD: {path} missing")
                out["dash"][rep.id] = {"content_type": aset.content_type, "segments": n,
                                       "codecs": rep.codecs, "bandwidth": rep.bandwidth,
                                       "width": rep.width, "height": rep.height}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
