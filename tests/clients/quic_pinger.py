#!/usr/bin/env python3
"""Opens a QUIC connection (ALPN h3), sends no request, and keeps it alive with PINGs.

Usage: quic_pinger.py HOST PORT WAIT_SECONDS
Prints "closed" when the server closes the connection within WAIT_SECONDS, else "open".
"""
import asyncio
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration


async def main():
    host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=config, wait_connected=True) as client:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(client.ping(), 2)
            except Exception:
                print("closed", flush=True)
                return
            await asyncio.sleep(0.3)
        print("open", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
