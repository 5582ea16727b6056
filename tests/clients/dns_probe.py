#!/usr/bin/env python3
"""DNS probes for the geo-DNS tests, with dnspython (an independent client).

    python3 dns_probe.py HOST PORT PROBES_JSON

PROBES_JSON is a list of probes; each is one of
  {"name": "edge.cdn.example.", "type": "A", "subnet": "10.1.2.0/24", "tcp": false,
   "edns": true, "payload": 1232}
  {"raw": "<hex bytes>"}                        (sent as is over UDP; the reply, if any)
  {"flood": N, "name": ..., "type": ..., "timeout": 0.3, "vary": "names"|"subnets",
   "cookie": false, "blast": false}
                                                (N queries over UDP, counted by outcome;
                                                 "vary" makes each query ask a new name under
                                                 the zone or send a new ECS network; "cookie"
                                                 first gets a server cookie and sends it with
                                                 every query, RFC 7873; "blast" sends all N
                                                 first, then counts the replies, so that
                                                 waiting for lost ones refills no budget)
A query probe with "cookie": true does the same handshake and describes the second reply.
Prints one JSON list with a result per probe.
"""
import json
import os
import socket
import sys

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


COOKIE = 10


def cookie_of(reply):
    """The COOKIE option's data in a reply, or None."""
    for opt in reply.options:
        if opt.otype == COOKIE:
            return opt.to_wire() if not hasattr(opt, "data") else opt.data
    return None


def describe(reply):
    ecs = None
    for opt in reply.options:
        if isinstance(opt, dns.edns.ECSOption):
            ecs = {"address": opt.address, "source": opt.srclen, "scope": opt.scopelen}
    cookie = cookie_of(reply)
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
        "cookie_len": None if cookie is None else len(cookie),
    }


def server_cookie(host, port, name):
    """A client cookie and the server cookie the server answers it with (one exchange)."""
    client = os.urandom(8)
    q = dns.message.make_query(
        name, "SOA", use_edns=0, options=[dns.edns.GenericOption(COOKIE, client)]
    )
    reply = dns.query.udp(q, host, port=port, timeout=5, ignore_trailing=True)
    data = cookie_of(reply)
    if data is None or bytes(data[:8]) != client:
        raise RuntimeError("the server returned no cookie for the client cookie")
    return bytes(data)


def query(host, port, probe):
    options = []
    if probe.get("cookie"):
        options.append(dns.edns.GenericOption(COOKIE, server_cookie(host, port, probe["name"])))
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
    zone = probe["name"].split(".", 1)[1]
    cookie = server_cookie(host, port, probe["name"]) if probe.get("cookie") else None

    def make(i):
        name = probe["name"]
        options = []
        if probe.get("vary") == "names":
            name = "r%d-%s.%s" % (i, os.urandom(3).hex(), zone)
        elif probe.get("vary") == "subnets":
            options.append(dns.edns.ECSOption("10.%d.%d.0" % (i // 256 % 256, i % 256), 24))
        if cookie is not None:
            options.append(dns.edns.GenericOption(COOKIE, cookie))
        return dns.message.make_query(
            name, probe.get("type", "A"), use_edns=0 if options else False, options=options
        ).to_wire()

    def count(data):
        reply = dns.message.from_wire(data, ignore_trailing=True)
        if reply.flags & dns.flags.TC:
            counts["truncated"] += 1
        else:
            counts["answered"] += 1

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(probe.get("timeout", 0.3))
        if probe.get("blast"):
            queries = [make(i) for i in range(probe["flood"])]
            for q in queries:
                s.sendto(q, (host, port))
            got = 0
            while got < len(queries):
                try:
                    data, _ = s.recvfrom(65535)
                except socket.timeout:
                    break
                got += 1
                count(data)
            counts["lost"] = len(queries) - got
            return counts
        for i in range(probe["flood"]):
            s.sendto(make(i), (host, port))
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                counts["lost"] += 1
                continue
            count(data)
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
