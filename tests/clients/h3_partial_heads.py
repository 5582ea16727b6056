#!/usr/bin/env python3
"""Opens HTTP/3 request streams that carry only the start of a HEADERS frame, then waits to
see whether the server gives the streams up.

Usage: h3_partial_heads.py HOST PORT N_STREAMS WAIT_SECONDS [SEND_BYTES]
With SEND_BYTES, each HEADERS frame announces 10 MB and SEND_BYTES of it are sent.
Prints "closed" when the server ended or reset every stream within WAIT_SECONDS, else
"open <n>" with the number of streams still open.
"""
import asyncio
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration


async def main():
    host, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    send = int(sys.argv[5]) if len(sys.argv) > 5 else None
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config) as client:
        streams = []
        for _ in range(n):
            reader, writer = await client.create_stream()
            if send is None:
                # HEADERS (type 1) announcing 1000 bytes (a two-byte varint), then only ten.
                writer.write(bytes([0x01, 0x43, 0xE8]) + b"\x00" * 10)
            else:
                # HEADERS announcing 10 MB (a four-byte varint), then `send` bytes of it.
                length = (0x80000000 | 10_000_000).to_bytes(4, "big")
                writer.write(bytes([0x01]) + length + b"\x00" * send)
            # The writer is kept: a collected StreamWriter closes its stream (FIN).
            streams.append((reader, writer))
        client.transmit()

        async def ended(reader):
            try:
                await reader.read()
            except Exception as e:
                print("exception", repr(e), file=sys.stderr)

        done, pending = await asyncio.wait(
            [asyncio.ensure_future(ended(r)) for r, _ in streams], timeout=wait
        )
        print("closed" if not pending else f"open {len(pending)}", flush=True)
        for p in pending:
            p.cancel()


if __name__ == "__main__":
    asyncio.run(main())
