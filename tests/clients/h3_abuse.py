#!/usr/bin/env python3
"""HTTP/3 abuse for tests/edge_h3_abuse.rs.

Usage: h3_abuse.py reset HOST PORT N_STREAMS PATH WAIT_SECONDS
Opens N_STREAMS request streams for PATH on one connection and cancels each at once
(RESET_STREAM and STOP_SENDING with H3_REQUEST_CANCELLED), as in a Rapid Reset attack, then
waits up to WAIT_SECONDS for the server to close the connection.
Prints "closed <error code>" when the server closed it, else "open".

Usage: h3_abuse.py cancel HOST PORT PATH WINDOW_BYTES
Asks for PATH with flow-control windows of WINDOW_BYTES (stream and connection), cancels the
request (RESET_STREAM and STOP_SENDING) as soon as the first body bytes arrive, keeps the
connection open for a second and prints "received <body bytes>".

Usage: h3_abuse.py head HOST PORT CASE
Sends one request whose head is CASE (see HEADS: some malformed by RFC 9114 section 4.2) as
raw field lines (some malformed by section 4.3) and prints "status <code>" for a response or "reset <code>" when the server
reset the stream.

Usage: h3_abuse.py version HOST PORT VERSION_HEX
Asks for /pub/hello.txt over QUIC version VERSION_HEX only (1 or 6b3343cf, RFC 9369) and
prints "status <code> version <the connection's version>" once body bytes arrived.

Usage: h3_abuse.py noack HOST PORT PATH WAIT_SECONDS
Asks for PATH and from then on acknowledges nothing (but sends a PING every 0.3 s, which
keeps QUIC's idle timeout from firing); prints "closed <error code>" when the server closed
the connection within WAIT_SECONDS, else "open".
"""
import asyncio
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.h3.events import DataReceived
from aioquic.h3.events import HeadersReceived
from aioquic.quic.events import ConnectionTerminated, StreamReset

H3_REQUEST_CANCELLED = 0x10C


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.terminated = None
        self.closed = asyncio.Event()
        self.received = 0
        self.first_data = asyncio.Event()
        self.answer = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.terminated = event.error_code
            self.closed.set()
            if not self.answer.done():
                self.answer.set_result(f"closed {event.error_code}")
            return
        if isinstance(event, StreamReset) and not self.answer.done():
            self.answer.set_result(f"reset {event.error_code}")
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived) and not self.answer.done():
                status = dict(e.headers).get(b":status", b"?").decode()
                self.answer.set_result(f"status {status}")
            if isinstance(e, DataReceived):
                self.received += len(e.data)
                self.first_data.set()


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


async def cancel(host, port, path, window):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    config.max_data = window
    config.max_stream_data = window
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        quic = client._quic
        sid = quic.get_next_available_stream_id()
        client.h3.send_headers(sid, head(host, path), end_stream=True)
        client.transmit()
        await asyncio.wait_for(client.first_data.wait(), 10)
        quic.reset_stream(sid, H3_REQUEST_CANCELLED)
        quic.stop_stream(sid, H3_REQUEST_CANCELLED)
        client.transmit()
        received = client.received
        await asyncio.sleep(1)
        print(f"received {received}", flush=True)


def heads(host):
    base = head(host, "/pub/hello.txt")
    return {
        "valid": base,
        "te-trailers": base + [(b"te", b"trailers")],
        "connection": base + [(b"connection", b"close")],
        "keep-alive": base + [(b"keep-alive", b"timeout=5")],
        "proxy-connection": base + [(b"proxy-connection", b"keep-alive")],
        "transfer-encoding": base + [(b"transfer-encoding", b"chunked")],
        "upgrade": base + [(b"upgrade", b"websocket")],
        "te-gzip": base + [(b"te", b"gzip")],
        # RFC 9114 section 4.3: a pseudo-header field repeated, or after a regular field.
        "duplicate-path": base + [(b":path", b"/pub/other.txt")],
        "duplicate-method": base[:1] + [(b":method", b"POST")] + base[1:],
        "late-pseudo": base[:3] + [(b"user-agent", b"h3_abuse")] + base[3:],
    }


async def send_head(host, port, case):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        sid = client._quic.get_next_available_stream_id()
        client.h3.send_headers(sid, heads(host)[case], end_stream=True)
        client.transmit()
        print(await asyncio.wait_for(client.answer, 10), flush=True)


async def version(host, port, v):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, supported_versions=[v])
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        sid = client._quic.get_next_available_stream_id()
        client.h3.send_headers(sid, head(host, "/pub/hello.txt"), end_stream=True)
        client.transmit()
        answer = await asyncio.wait_for(client.answer, 10)
        await asyncio.wait_for(client.first_data.wait(), 10)
        print(f"{answer} version {client._quic._version:#x}", flush=True)


async def noack(host, port, path, wait):
    from aioquic.quic.connection import QuicConnection

    write_ack = QuicConnection._write_ack_frame
    silent = {"on": False}

    def maybe_ack(self, builder, space, now):
        if silent["on"]:
            # Drop the acknowledgement that was due, as a client that never acknowledges.
            space.ack_at = None
        else:
            write_ack(self, builder=builder, space=space, now=now)

    QuicConnection._write_ack_frame = maybe_ack
    # Nor does it give up itself when the server's retransmissions thin out.
    QuicConnection._idle_timeout = lambda self: 3600.0
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        quic = client._quic
        silent["on"] = True
        sid = quic.get_next_available_stream_id()
        client.h3.send_headers(sid, head(host, path), end_stream=True)
        client.transmit()
        deadline = asyncio.get_event_loop().time() + wait
        n = 0
        while client.terminated is None and asyncio.get_event_loop().time() < deadline:
            n += 1
            quic.send_ping(n)
            client.transmit()
            await asyncio.sleep(0.3)
        print("open" if client.terminated is None else f"closed {client.terminated}", flush=True)


def main():
    mode = sys.argv[1]
    if mode == "reset":
        host, port, n, path, wait = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
        asyncio.run(reset(host, port, n, path, wait))
    elif mode == "cancel":
        host, port, path, window = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        asyncio.run(cancel(host, port, path, window))
    elif mode == "noack":
        host, port, path, wait = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        asyncio.run(noack(host, port, path, wait))
    elif mode == "head":
        asyncio.run(send_head(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif mode == "version":
        asyncio.run(version(sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 16)))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
