#!/usr/bin/env python3
"""DNS probes for the geo-DNS tests, with dnspython (an independent client).

    python3 dns_probe.py HOST PORT PROBES_JSON

PROBES_JSON is a list of probes; each is one of
  {"name": "edge.cdn.example.", "type": "A", "subnet": "10.1.2.0/24", "tcp": false,
   "edns": true, "payload": 1232}
  {"raw": "<hex bytes>"}                        (sent as is over UDP; the reply, if any)
  {"flood": N, "name": ..., "type": ..., "timeout": 0.3}
                                                (N queries over UDP, counted by outcome)
Prints one JSON list with a result per probe.
"""
import json
import socket
import sys

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def describe(reply):
    ecs = None
    for opt in reply.options:
        if isinstance(opt, dns.edns.ECSOption):
            ecs = {"address": opt.address, "source": opt.srclen, "scope": opt.scopelen}
    return {
        "rcode": dns.rcode.to_text(reply.rcode()),
        "aa": bool(reply.flags & dns.flags.AA),
        "tc": bool(reply.flags & dns.flags.TC),
        "ra": bool(reply.flags & dns.flags.RA),
        "answers": sorted(str(rd) for rrset in reply.answer for rd in rrset),
        "answer_types": sorted({dns.rdatatype.to_text(r.rdtype) for r in reply.answer}),
        "ttls": sorted({r.ttl for r in reply.answer}),
        "authority_types": sorted(dns.rdatatype.to_text(r.rdtype) for r in reply.authority),
        "additional": sorted(str(rd) for rrset in reply.additional for rd in rrset),
        "edns": reply.edns,
        "ecs": ecs,
    }


def query(host, port, probe):
    options = []
    if probe.get("subnet"):
        address, prefix = probe["subnet"].split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    use_edns = probe.get("edns", True) or bool(options)
    q = dns.message.make_query(
        probe["name"],
        probe.get("type", "A"),
        use_edns=0 if use_edns else False,
        payload=probe.get("payload", 1232),
        options=options,
    )
    q.flags &= ~dns.flags.RD
    if probe.get("tcp"):
        reply = dns.query.tcp(q, host, port=port, timeout=5)
    else:
        reply = dns.query.udp(q, host, port=port, timeout=5, ignore_trailing=True)
    return describe(reply)


def raw(host, port, probe):
    data = bytes.fromhex(probe["raw"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(data, (host, port))
        try:
            reply, _ = s.recvfrom(65535)
        except socket.timeout:
            return {"reply": None}
    # The header alone: id, flags and rcode, for replies to malformed queries.
    return {
        "reply": reply.hex(),
        "id": int.from_bytes(reply[0:2], "big"),
        "rcode": dns.rcode.to_text(reply[3] & 0x0F),
        "qr": bool(reply[2] & 0x80),
    }


def flood(host, port, probe):
    counts = {"answered": 0, "truncated": 0, "lost": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(probe.get("timeout", 0.3))
        for _ in range(probe["flood"]):
            q = dns.message.make_query(probe["name"], probe.get("type", "A"))
            s.sendto(q.to_wire(), (host, port))
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                counts["lost"] += 1
                continue
            reply = dns.message.from_wire(data, ignore_trailing=True)
            if reply.flags & dns.flags.TC:
                counts["truncated"] += 1
            else:
                counts["answered"] += 1
    return counts


def main():
    host, port, probes = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    out = []
    for p in probes:
        try:
            if "raw" in p:
                out.append(raw(host, port, p))
            elif "flood" in p:
                out.append(flood(host, port, p))
            else:
                out.append(query(host, port, p))
        except dns.exception.Timeout:
            out.append({"error": "timeout"})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
