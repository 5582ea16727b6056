#!/usr/bin/env python3
"""A client that keeps fetching segments from several edges while they are upgraded, and
watches each edge's /readyz; for scripts/test-ansible.sh (upgrade.yml).

  [ROLLING_BIG_PATH=/big.bin] rolling_client.py OUT.json STOP_FILE MASTER_URL_PREFIX EDGE... -- ADMIN...

MASTER_URL_PREFIX is a signed path-form prefix with EDGE as a placeholder host, e.g.
`http://{edge}/t/<token>/v/lab/`. Each request opens a new connection (no keep-alive) to the
next edge in turn and reads the body slowly (so requests are in flight when a drain
begins). A request that gets no answer from an edge (connection refused or reset before a
status line: a player moves to another pathway) is retried on the next edge and counted as
a failover; a request that got a status line and then anything but a complete 200 body, or
that no edge answered, is a failure. Runs until STOP_FILE exists, then writes OUT.json:
{"requests", "failures": [...], "failovers", "served_by": {edge: n}, "readyz": {admin: [statuses in order, repeats folded]}}.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def fetch(host_port, path, slow):
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            return "no-answer", repr(e)
        try:
            length = resp.getheader("Content-Length")
            got = 0
            while True:
                chunk = resp.read(65536 if slow == "big" else 8192)
                if not chunk:
                    break
                got += len(chunk)
                if slow == "big":
                    time.sleep(0.008)
                elif slow:
                    time.sleep(0.05)
            if resp.status != 200:
                return "failure", f"status {resp.status}"
            if length is not None and got != int(length):
                return "failure", f"body {got} of {length} bytes"
            return "ok", got
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            return "failure", f"after status {resp.status}: {e!r}"
    finally:
        conn.close()


def main():
    out, stop_file, prefix = sys.argv[1:4]
    rest = sys.argv[4:]
    sep = rest.index("--")
    edges, admins = rest[:sep], rest[sep + 1 :]
    # The segment paths, from the first rendition's playlist.
    def text(path):
        status, body = None, b""
        host, port = edges[0].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200, (path, resp.status)
        return body.decode()
    base = urllib.parse.urlsplit(prefix.format(edge=edges[0])).path
    master = text(base + "master.m3u8")
    variant = [l for l in master.splitlines() if l and not l.startswith("#")][0]
    playlist_path = base + variant
    playlist = text(playlist_path)
    variant_dir = playlist_path.rsplit("/", 1)[0] + "/"
    paths = [variant_dir + l for l in playlist.splitlines() if l and not l.startswith("#")]
    paths.append(playlist_path)

    lock = threading.Lock()
    state = {"requests": 0, "failures": [], "failovers": 0, "served_by": {e: 0 for e in edges}}
    readyz = {a: [] for a in admins}

    def worker(offset):
        n = offset
        while not os.path.exists(stop_file):
            path = paths[n % len(paths)]
            answered = False
            for k in range(len(edges)):
                edge = edges[(n + k) % len(edges)]
                result, detail = fetch(edge, path, slow=True)
                if result == "no-answer":
                    with lock:
                        state["failovers"] += 1
                    continue
                answered = True
                with lock:
                    state["requests"] += 1
                    if result == "ok":
                        state["served_by"][edge] += 1
                    else:
                        state["failures"].append(f"{edge}{path}: {detail}")
                break
            if not answered:
                with lock:
                    state["requests"] += 1
                    state["failures"].append(f"{path}: no edge answered")
                time.sleep(0.1)
            n += 1

    def watch(admin):
        while not os.path.exists(stop_file):
            result = "refused"
            host, port = admin.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            try:
                conn.request("GET", "/readyz")
                result = str(conn.getresponse().status)
            except (ConnectionError, OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            seen = readyz[admin]
            if not seen or seen[-1] != result:
                seen.append(result)
            time.sleep(0.03)

    # Large downloads read slowly keep requests in flight on every edge, so that a drain has
    # something to wait for (a segment fits in the socket buffers and is done at once).
    big = os.environ.get("ROLLING_BIG_PATH")

    def big_worker(edge):
        while not os.path.exists(stop_file):
            result, detail = fetch(edge, big, slow="big")
            with lock:
                if result == "no-answer":
                    state["failovers"] += 1
                else:
                    state["requests"] += 1
                    if result == "ok":
                        state["big_served"] = state.get("big_served", 0) + 1
                    else:
                        state["failures"].append(f"{edge}{big}: {detail}")
            if result == "no-answer":
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    if big:
        threads += [threading.Thread(target=big_worker, args=(e,)) for e in edges for _ in range(2)]
    threads += [threading.Thread(target=watch, args=(a,)) for a in admins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state["readyz"] = readyz
    with open(out, "w") as f:
        json.dump(state, f, indent=1)


if __name__ == "__main__":
    main()
