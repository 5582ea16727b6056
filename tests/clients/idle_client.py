#!/usr/bin/env python3
"""A client that takes a connection slot and then stays silent, to see whether the server
closes the connection.

Usage: idle_client.py MODE HOST PORT WAIT_SECONDS
MODE: "tls" (a TLS handshake, then nothing), "h2" (TLS with ALPN h2, one request answered,
then nothing; PINGs are acknowledged, as a real client does).
Prints "ready" once the slot is taken (after the answer for h2), then "closed" when the
server closes the connection, or "open" if it is still open after WAIT_SECONDS.
"""
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def main():
    mode, host, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
    raw = socket.create_connection((host, port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    conn = None
    if mode == "h2":
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", "/pub/hello.txt"),
                                (":scheme", "https"), (":authority", host)], end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                print("closed before the answer", flush=True)
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
    print("ready", flush=True)
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print("open", flush=True)
            return
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError):
            print("closed", flush=True)
            return
        if not data:
            print("closed", flush=True)
            return
        if conn is not None:
            # GOAWAY and PINGs: answer what needs an answer, keep waiting for the close.
            try:
                conn.receive_data(data)
                sock.sendall(conn.data_to_send())
            except Exception:
                pass


if __name__ == "__main__":
    main()
