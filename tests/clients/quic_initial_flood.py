#!/usr/bin/env python3
"""Sends QUIC Initial packets (a real ClientHello each, a fresh connection id each) from UDP
sockets that never read an answer, as a flood from spoofed addresses would.

Usage: quic_initial_flood.py MODE HOST PORT N HOLD_SECONDS
MODE "spoofed": one Initial per connection, nothing read. MODE "validated": the client also
answers the server's first datagram (a Retry) with the Initial that carries its token, and
then falls silent: a half-open connection from an address that passed validation.
Each connection has its own socket on one of the loopback addresses 127.0.0.2 to
127.0.0.201. Prints "sent N", then keeps the sockets open for HOLD_SECONDS.
"""
import socket
import ssl
import sys
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection


def main():
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hold = float(sys.argv[5])
    sockets = []
    for i in range(n):
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
        config.verify_mode = ssl.CERT_NONE
        conn = QuicConnection(configuration=config)
        now = time.time()
        conn.connect((host, port), now=now)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + i % 200}", 0))
        for data, addr in conn.datagrams_to_send(now=now):
            sock.sendto(data, addr)
        if mode == "validated":
            sock.settimeout(5)
            data, addr = sock.recvfrom(65536)
            conn.receive_datagram(data, addr, now=time.time())
            for data, addr in conn.datagrams_to_send(now=time.time()):
                sock.sendto(data, addr)
        # Kept open (and never read) so that the kernel does not answer with ICMP errors.
        sockets.append(sock)
    print(f"sent {n}", flush=True)
    time.sleep(hold)


if __name__ == "__main__":
    main()
