//! The geo-DNS of `estuary steering`, from a static state file, probed with dig and dnspython
//! over UDP and TCP: `edge.<zone>` answers the best edges of the client's site (by EDNS Client
//! Subnet, with the scope set in the answer), never an edge that is down, and overflows from a
//! site that is down; `<site>.<zone>` lists a site's edges; SOA, NS with glue, NXDOMAIN and
//! NODATA with the SOA, REFUSED outside the zone; truncation for large answers over UDP and
//! the whole answer over TCP; malformed packets; response rate limiting with slip.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::steering_site::*;
use common::*;

fn edge(id: &str, site: &str, host: &str, up: bool) -> serde_json::Value {
    serde_json::json!({
        "id": id, "site": site, "role": "edge",
        "addresses": {"https": format!("https://{host}:8443"), "http": format!("http://{host}:8080")},
        "capacity": {"gbps": 10.0},
        "up": up, "last_heartbeat": 0,
        "load": {}, "usage": {}, "version": "test", "assets": []
    })
}

fn snapshot() -> serde_json::Value {
    let mut nodes = serde_json::Map::new();
    let mut add = |n: serde_json::Value| {
        nodes.insert(n["id"].as_str().expect("id").to_owned(), n);
    };
    add(edge("lab-1", "lab", "127.0.0.11", true));
    add(edge("lab-2", "lab", "127.0.0.12", true));
    add(edge("far-1", "far", "127.0.0.21", true));
    add(edge("far-6", "far", "[2001:db8::21]", true));
    add(edge("far-3", "far", "127.0.0.23", false));
    add(edge("gone-1", "gone", "127.0.0.31", false));
    for i in 1..=40 {
        add(edge(
            &format!("big-{i}"),
            "big",
            &format!("127.0.1.{i}"),
            true,
        ));
    }
    serde_json::json!({
        "version": 7, "generated_at": 0,
        "sites": {
            "lab": {"name": "lab", "location": [52.5, 13.4], "coverage": ["10.1.0.0/16"]},
            "far": {"name": "far", "location": [40.7, -74.0], "coverage": ["10.2.0.0/16"]},
            "gone": {"name": "gone", "location": [52.4, 13.3], "coverage": ["10.3.0.0/16"]},
            "big": {"name": "big", "location": [-33.9, 151.2], "coverage": []}
        },
        "nodes": nodes
    })
}

/// `dig` against the server; its full output.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = run(Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+norecurse",
            "+time=3",
            "+tries=1",
        ])
        .args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?}: {text}");
    text
}

/// The addresses of the answer section of a `+noall +answer` dig output.
fn answer_ips(text: &str) -> Vec<String> {
    let mut ips: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && (f[3] == "A" || f[3] == "AAAA")).then(|| f[4].to_owned())
        })
        .collect();
    ips.sort();
    ips
}

fn probe(addr: SocketAddr, probes: serde_json::Value) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/dns_probe.py");
    let out = run(Command::new("python3").args([
        script,
        &addr.ip().to_string(),
        &addr.port().to_string(),
        &probes.to_string(),
    ]));
    assert!(
        out.status.success(),
        "dns_probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe json")
}

fn start(name: &str, dns_keys: &str) -> (SteeringSite, SocketAddr, EdgeProcess) {
    let mut s = SteeringSite::new(name);
    s.with_state_file(&snapshot());
    s.coverage = serde_json::json!({
        "coverageZones": {
            "far": {"network": ["10.9.0.0/16"]},
            "lab": {"network": ["10.9.8.0/24"], "network6": ["2001:db8:aa::/48"]}
        }
    })
    .to_string();
    let addr = s.with_dns("cdn.example.", dns_keys);
    let process = s.start();
    (s, addr, process)
}

#[test]
fn geo_dns_answers_by_client_subnet_with_correct_negative_answers_truncation_and_tcp() {
    let (_site, dns, _p) = start(
        "steer-dns",
        "ttl = \"30s\"\nanswers = 2\nns_addresses = [\"127.0.0.1\"]\n",
    );

    // dig with +subnet: a client of lab gets lab's two edges, and the ECS scope in the answer
    // is the longer of its source prefix and the matched network.
    let text = dig(dns, &["edge.cdn.example", "A", "+subnet=10.1.2.0/24"]);
    assert!(text.contains("flags: qr aa"), "{text}");
    assert!(
        text.contains("CLIENT-SUBNET: 10.1.2.0/24/24"),
        "no ECS scope: {text}"
    );
    let short = dig(
        dns,
        &[
            "edge.cdn.example",
            "A",
            "+subnet=10.1.2.0/24",
            "+noall",
            "+answer",
        ],
    );
    assert_eq!(answer_ips(&short), ["127.0.0.11", "127.0.0.12"], "{short}");
    assert!(
        short.contains("\t30\tIN\tA") || short.contains(" 30 IN A"),
        "TTL: {short}"
    );
    // far: its down edge is never answered; its IPv6 edge only to AAAA.
    let far = dig(
        dns,
        &[
            "edge.cdn.example",
            "A",
            "+subnet=10.2.3.0/24",
            "+noall",
            "+answer",
        ],
    );
    assert_eq!(answer_ips(&far), ["127.0.0.21"], "{far}");
    let far6 = dig(
        dns,
        &[
            "edge.cdn.example",
            "AAAA",
            "+subnet=10.2.3.0/24",
            "+noall",
            "+answer",
        ],
    );
    assert_eq!(answer_ips(&far6), ["2001:db8::21"], "{far6}");
    // A site whose edges are all down overflows to another site.
    let gone = dig(
        dns,
        &[
            "edge.cdn.example",
            "A",
            "+subnet=10.3.4.0/24",
            "+noall",
            "+answer",
        ],
    );
    let ips = answer_ips(&gone);
    assert!(
        !ips.is_empty() && !ips.contains(&"127.0.0.31".to_owned()),
        "{gone}"
    );
    // TCP as well as UDP.
    let tcp = dig(
        dns,
        &[
            "+tcp",
            "edge.cdn.example",
            "A",
            "+subnet=10.1.2.0/24",
            "+noall",
            "+answer",
        ],
    );
    assert_eq!(answer_ips(&tcp), ["127.0.0.11", "127.0.0.12"], "{tcp}");

    // dnspython: coverage zone file networks (the more specific one wins), scopes, sites by
    // name (any case), apex records, negative answers and refusals.
    let r = probe(
        dns,
        serde_json::json!([
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.8.0/24"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.1.0/24"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.0.0/16"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "2001:db8:aa:1::/56"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "0.0.0.0/0"},
            {"name": "LAB.cdn.EXAMPLE.", "type": "A"},
            {"name": "cdn.example.", "type": "SOA"},
            {"name": "cdn.example.", "type": "NS"},
            {"name": "nope.cdn.example.", "type": "A"},
            {"name": "edge.cdn.example.", "type": "TXT"},
            {"name": "a.b.cdn.example.", "type": "A"},
            {"name": "example.org.", "type": "A"},
            {"name": "ns1.cdn.example.", "type": "A"},
            {"name": "edge.cdn.example.", "type": "A", "edns": false}
        ]),
    );
    let lab_ips = ["127.0.0.11", "127.0.0.12"];
    assert_eq!(r[0]["answers"], serde_json::json!(lab_ips), "{}", r[0]);
    assert_eq!(r[0]["ecs"]["scope"], 24);
    assert_eq!(
        r[1]["answers"],
        serde_json::json!(["127.0.0.21"]),
        "{}",
        r[1]
    );
    assert_eq!(r[1]["ecs"]["scope"], 24);
    // 10.9.0.0/16 holds a more specific network (10.9.8.0/24): the answer is only as wide
    // as that.
    assert_eq!(r[2]["ecs"]["scope"], 24, "{}", r[2]);
    assert_eq!(r[3]["answers"], serde_json::json!(lab_ips), "{}", r[3]);
    assert_eq!(r[3]["ecs"]["scope"], 56, "{}", r[3]);
    assert_eq!(r[4]["ecs"]["scope"], 0, "{}", r[4]);
    assert_eq!(r[5]["answers"], serde_json::json!(lab_ips), "{}", r[5]);
    assert_eq!(r[6]["answer_types"], serde_json::json!(["SOA"]), "{}", r[6]);
    assert_eq!(r[6]["aa"], true);
    assert_eq!(r[7]["answers"], serde_json::json!(["ns1.cdn.example."]));
    assert_eq!(
        r[7]["additional"],
        serde_json::json!(["127.0.0.1"]),
        "{}",
        r[7]
    );
    for (i, rcode) in [(8, "NXDOMAIN"), (9, "NOERROR"), (10, "NXDOMAIN")] {
        assert_eq!(r[i]["rcode"], rcode, "{}", r[i]);
        assert_eq!(r[i]["answers"], serde_json::json!([]), "{}", r[i]);
        assert_eq!(
            r[i]["authority_types"],
            serde_json::json!(["SOA"]),
            "{}",
            r[i]
        );
        assert_eq!(r[i]["aa"], true);
    }
    assert_eq!(r[11]["rcode"], "REFUSED", "{}", r[11]);
    assert_eq!(r[11]["aa"], false);
    assert_eq!(
        r[12]["answers"],
        serde_json::json!(["127.0.0.1"]),
        "{}",
        r[12]
    );
    assert_eq!(r[13]["rcode"], "NOERROR");
    assert_eq!(r[13]["edns"], -1, "EDNS in an answer to a query without it");
    for x in &r {
        assert_eq!(x["ra"], false, "an authoritative server offered recursion");
    }

    // Forty edges do not fit in 512 bytes: truncated over UDP without EDNS, whole over TCP.
    // With a 4 KiB buffer they fit, but the answer is over three times the query: only a
    // client that proved its address with a DNS cookie gets it over UDP.
    let r = probe(
        dns,
        serde_json::json!([
            {"name": "big.cdn.example.", "type": "A", "edns": false},
            {"name": "big.cdn.example.", "type": "A", "tcp": true},
            {"name": "big.cdn.example.", "type": "A", "payload": 4096, "cookie": true},
            {"name": "big.cdn.example.", "type": "A", "payload": 4096}
        ]),
    );
    assert_eq!(
        r[3]["tc"], true,
        "an unproven address got a large answer: {}",
        r[3]
    );
    assert_eq!(
        r[3]["answers"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r[3]
    );
    assert_eq!(r[3]["cookie_len"], serde_json::Value::Null, "{}", r[3]);
    assert_eq!(r[2]["tc"], false, "{}", r[2]);
    assert_eq!(r[2]["cookie_len"], 24, "{}", r[2]);
    assert_eq!(r[0]["tc"], true, "{}", r[0]);
    assert!(r[0]["answers"].as_array().map_or(0, Vec::len) < 40);
    assert_eq!(r[1]["tc"], false);
    assert_eq!(
        r[1]["answers"].as_array().map(Vec::len),
        Some(40),
        "{}",
        r[1]
    );
    assert_eq!(
        r[2]["answers"].as_array().map(Vec::len),
        Some(40),
        "{}",
        r[2]
    );

    // Malformed packets: too short (no reply), garbage after a header (FORMERR), two
    // questions (FORMERR), an answer sent to us (ignored), a NOTIFY (NOTIMP); the server
    // answers normally afterwards.
    let q = "abcd0000000100000000000004656467650363646e076578616d706c650000010001";
    let two = "abce0000000200000000000004656467650363646e076578616d706c650000010001\
               04656467650363646e076578616d706c650000010001";
    let response = "abcf8400000100000000000004656467650363646e076578616d706c650000010001";
    let notify = "abd02000000100000000000004656467650363646e076578616d706c650000060001";
    let r = probe(
        dns,
        serde_json::json!([
            {"raw": "0102"},
            {"raw": "abcc00000001000000000000ffffffff"},
            {"raw": two},
            {"raw": response},
            {"raw": notify},
            {"raw": q}
        ]),
    );
    assert_eq!(r[0]["reply"], serde_json::Value::Null);
    assert_eq!(r[1]["rcode"], "FORMERR", "{}", r[1]);
    assert_eq!(r[1]["id"], 0xabcc);
    assert_eq!(r[2]["rcode"], "FORMERR", "{}", r[2]);
    assert_eq!(
        r[3]["reply"],
        serde_json::Value::Null,
        "answered a response"
    );
    assert_eq!(r[4]["rcode"], "NOTIMP", "{}", r[4]);
    assert_eq!(r[5]["rcode"], "NOERROR", "{}", r[5]);
    assert_eq!(r[5]["id"], 0xabcd);
}

#[test]
fn responses_over_the_rate_limit_are_dropped_or_truncated_and_tcp_still_answers() {
    let (site, dns, _p) = start("steer-rrl", "rrl_responses_per_second = 10\nrrl_slip = 2\n");
    let r = probe(
        dns,
        serde_json::json!([
            {"flood": 120, "name": "edge.cdn.example.", "type": "A", "timeout": 0.2},
            {"name": "edge.cdn.example.", "type": "A", "tcp": true}
        ]),
    );
    let counts = &r[0];
    let answered = counts["answered"].as_u64().unwrap_or(0);
    let truncated = counts["truncated"].as_u64().unwrap_or(0);
    let lost = counts["lost"].as_u64().unwrap_or(0);
    // A burst of one second's worth plus what refills while the flood runs.
    assert!((10..100).contains(&answered), "{counts}");
    assert!(truncated > 0 && lost > 0, "{counts}");
    assert_eq!(
        r[1]["rcode"], "NOERROR",
        "TCP is not rate limited: {}",
        r[1]
    );
    let (status, _, body) = fetch(&site.url("/metrics"), &[]);
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for action in ["slipped", "dropped"] {
        assert!(
            text.contains(&format!(
                "estuary_steering_dns_rate_limited_total{{action=\"{action}\"}}"
            )),
            "{text}"
        );
    }
    assert!(
        text.contains(
            "estuary_steering_dns_responses_total{rcode=\"noerror\",transport=\"tcp\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn rate_limits_hold_per_client_network_across_names_and_subnets_and_cookies_prove_a_client() {
    let (site, dns, _p) = start(
        "steer-rrl-networks",
        "rrl_responses_per_second = 20\nrrl_nxdomains_per_second = 20\nrrl_slip = 2\n",
    );
    let r = probe(
        dns,
        serde_json::json!([
            {"flood": 200, "name": "edge.cdn.example.", "type": "A", "timeout": 0.5,
             "vary": "names", "blast": true},
            {"flood": 200, "name": "edge.cdn.example.", "type": "A", "timeout": 0.5,
             "vary": "subnets", "blast": true},
        ]),
    );
    // Varying the name asked (random subdomains: NXDOMAIN) or the ECS network no longer buys
    // more responses: one network's budget is the same whatever it asks (before: 166 of 200
    // answered with a limit of 20).
    for counts in &r[..2] {
        let answered = counts["answered"].as_u64().unwrap_or(0);
        assert!(answered < 100, "{counts}");
        assert!(counts["lost"].as_u64().unwrap_or(0) > 0, "{counts}");
    }
    // A client that returns its server cookie has proven its address: not rate limited.
    let r = probe(
        dns,
        serde_json::json!([
            {"flood": 200, "name": "edge.cdn.example.", "type": "A", "timeout": 1.0,
             "cookie": true, "blast": true},
        ]),
    );
    assert_eq!(r[0]["answered"], 200, "{}", r[0]);
    let (_, _, body) = fetch(&site.url("/metrics"), &[]);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("estuary_steering_dns_amplification_capped_total"),
        "{text}"
    );
}

#[test]
fn network_scoped_ecs_answers_hold_for_the_widest_network_they_fit() {
    // Coverage (see `start`): far is 10.9.0.0/16, lab the 10.9.8.0/24 inside it.
    let (_site, dns, _p) = start("steer-ecs-network", "ecs_scope = \"network\"\n");
    let r = probe(
        dns,
        serde_json::json!([
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.200.0/24"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.130.0/24"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.8.0/24"},
            {"name": "edge.cdn.example.", "type": "A", "subnet": "10.9.3.0/24"},
        ]),
    );
    // 10.9.128.0/17 holds no narrower coverage network: one answer for all of it.
    assert_eq!(r[0]["ecs"]["scope"], 17, "{}", r[0]);
    assert_eq!(r[1]["ecs"]["scope"], 17, "{}", r[1]);
    assert_eq!(r[0]["answers"], r[1]["answers"]);
    // lab's own /24, and the /21 beside it that holds nothing narrower.
    assert_eq!(r[2]["ecs"]["scope"], 24, "{}", r[2]);
    assert_eq!(r[3]["ecs"]["scope"], 21, "{}", r[3]);
}
