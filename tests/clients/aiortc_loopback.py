"""What the aiortc test clients need patched, imported before aiortc is used.

1. aioice leaves loopback out of host candidates; the tests run on loopback, so its host
   address lookup is replaced by one that returns 127.0.0.1.

2. aiortc 1.16 with its default bundle policy (balanced) loses the second of two video
   m-lines that one renegotiation adds to a connection with no video yet (an audio-only
   participant joining two video publishers): the second transceiver takes the first's new
   transport and is marked bundled at once, so applying the remote BUNDLE group moves the
   first onto the connection's transport and leaves the second on the new one, which is then
   closed: its packets are dropped and it decodes nothing (aiortc issue #1414, open).
   The patch marks a new transceiver bundled only when it shares the first transceiver's
   transport (the BUNDLE group's first m-line in every connection these clients make), so
   the group moves it as it moves the first video m-line.
"""
import aioice.ice
from aiortc import RTCPeerConnection

aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: ["127.0.0.1"]

_create_transceiver = RTCPeerConnection._RTCPeerConnection__createTransceiver


def _create_transceiver_bundled_to_first(self, *args, **kwargs):
    transceiver = _create_transceiver(self, *args, **kwargs)
    first = self.getTransceivers()[0]
    if transceiver._bundled and transceiver.receiver.transport is not first.receiver.transport:
        transceiver._bundled = False
    return transceiver


RTCPeerConnection._RTCPeerConnection__createTransceiver = _create_transceiver_bundled_to_first
