#!/usr/bin/env python3
"""A hostile node for the security tests: serves the files under ROOT over plain HTTP (what a
compromised or fake node would hand its peers), answers /readyz and /metrics so the control
plane's monitor counts it up, and records every request it receives (method, path and the
Authorization header) as one JSON line in LOG, so a test can tell what the fleet sent it.

Usage: rogue_node.py PORT ROOT LOG
"""
import http.server
import json
import os
import sys
import urllib.parse

PORT, ROOT, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
            }) + "\n")

    def _send(self, status, body, ctype="application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._record()
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/readyz", "/healthz"):
            return self._send(200, b"ready\n", "text/plain")
        if path == "/metrics":
            return self._send(200, b"", "text/plain")
        local = os.path.normpath(os.path.join(ROOT, urllib.parse.unquote(path).lstrip("/")))
        if not local.startswith(os.path.abspath(ROOT)) or not os.path.isfile(local):
            return self._send(404, b"not found\n", "text/plain")
        with open(local, "rb") as f:
            self._send(200, f.read())

    do_HEAD = do_GET

    def do_DELETE(self):
        self._record()
        self._send(200, b"{}\n", "application/json")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
