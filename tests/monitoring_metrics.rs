//! What Prometheus and Grafana read: every service's `/metrics` passes `promtool check
//! metrics`, and every PromQL expression of the Grafana dashboards in
//! `ansible/roles/monitoring/files/dashboards/` queries only metrics (and labels) that some
//! service really exports.
//!
//! One control plane, an edge and steering joined to it (steering with its geo-DNS), an
//! origin and an SFU are started once; each is asked for one request so that its per-request
//! series exist, then each `/metrics` is scraped. promtool comes from Debian's `prometheus`
//! package (`scripts/setup-debian.sh test` installs it); the test fails when it is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use common::cp_site::{ControlPlane, LAB, cred, edge_with_control_plane};
use common::origin_site::OriginSite;
use common::sfu::{Sfu, synthetic_offer};
use common::steering_site::SteeringSite;
use common::{TempDir, fetch, http_get_raw};

/// One service's `/metrics` text.
struct Scrape {
    service: &'static str,
    text: String,
}

/// Every service started, used once and scraped; the processes stop before the tests read it.
static SCRAPES: LazyLock<Vec<Scrape>> = LazyLock::new(scrape_every_service);

fn scrape(service: &'static str, admin: SocketAddr) -> Scrape {
    let (status, text) = http_get_raw(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{service} /metrics: {text}");
    Scrape { service, text }
}

fn scrape_every_service() -> Vec<Scrape> {
    let cp = ControlPlane::new("mon-cp");
    let mut cp_process = cp.start();

    let edge_site = edge_with_control_plane("mon-edge", &cp.url(), LAB);
    let mut edge = edge_site.start();
    cp.wait_node("edge-test", true, Duration::from_secs(20));

    let origin_site = OriginSite::new("mon-origin");
    let mut origin = origin_site.start();

    let mut steering_site = SteeringSite::new("mon-steering");
    steering_site.with_control_plane(&cp.url(), &cred("steering-test"));
    steering_site.steering = "scheme = \"http\"\n".into();
    steering_site.coverage = r#"{"coverageZones": {"lab": {"network": ["127.0.0.0/8"]}}}"#.into();
    let dns = steering_site.with_dns(
        "cdn.example.",
        "nameservers = [\"ns1.cdn.example.\"]\nns_addresses = [\"127.0.0.1\"]\n",
    );
    let mut steering = steering_site.start();
    cp.wait_node("steering-test", true, Duration::from_secs(20));

    // One request each, so that the series a request creates exist (a refused token, a DNS
    // answer, a steering choice).
    let (status, _, _) = fetch(&edge_site.url("/pub/hello.txt"), &[]);
    assert_eq!(status, 200);
    let (status, _, _) = fetch(&edge_site.url("/v/abc/master.m3u8"), &[]);
    assert_eq!(status, 403, "an unsigned request for a protected path");
    let (status, _, _) = fetch(&steering_site.url("/v1/playback/abc"), &[]);
    assert!(status < 500, "steering /v1/playback/abc: {status}");
    let dig = Command::new("dig")
        .args(["+short", "+tries=1", "+time=2", &format!("@{}", dns.ip())])
        .args(["-p", &dns.port().to_string(), "edge.cdn.example.", "A"])
        .output()
        .expect("dig (apt-get install dnsutils)");
    assert!(dig.status.success(), "dig: {dig:?}");
    let (status, _, _) = fetch(&origin_site.url("/v/none/master.m3u8"), &[]);
    assert_eq!(status, 404);
    // With [recording], so that its metrics are checked too (no origin listens there: nothing
    // is recorded).
    let rec_dir = TempDir::new("mon-sfu-rec");
    let mut sfu = Sfu::start(
        "mon-sfu",
        &format!(
            "[recording]\ndir = \"{}\"\norigin = \"http://127.0.0.1:9\"\nupload_token = \"mon-recording-token-0123\"\n",
            rec_dir.path().display()
        ),
    );
    let (status, _, _) = sfu.offer("whip", "r1", &synthetic_offer("sendonly"));
    assert_eq!(status, 201);

    let scrapes = vec![
        scrape("edge", edge_site.admin),
        scrape("origin", origin_site.admin),
        scrape("control-plane", cp.http),
        scrape("steering", steering_site.http),
        scrape("sfu", sfu.http),
    ];
    for p in [
        &mut steering,
        &mut edge,
        &mut origin,
        &mut cp_process,
        &mut sfu.process,
    ] {
        p.signal("TERM");
        p.wait_exit(Duration::from_secs(15));
    }
    scrapes
}

/// The path of `promtool`; the test fails (never skips) without it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not installed: scripts/setup-debian.sh test installs Debian's prometheus package, which ships it"
        )
    })
}

#[test]
fn promtool_check_metrics_passes_on_every_service() {
    let promtool = promtool();
    // promtool itself must tell a bad exposition from a good one, or this test proves nothing.
    let bad =
        "# HELP estuary_bad_bytes Bytes.\n# TYPE estuary_bad_bytes counter\nestuary_bad_bytes 1\n";
    let (ok, out) = check_metrics(&promtool, bad);
    assert!(
        !ok && out.contains("_total"),
        "promtool accepted a counter without _total: {out}"
    );

    let mut problems = Vec::new();
    for s in SCRAPES.iter() {
        let families = s.text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert!(
            families >= 5,
            "{} exports {families} families:\n{}",
            s.service,
            s.text
        );
        let (ok, out) = check_metrics(&promtool, &s.text);
        if !ok || !out.trim().is_empty() {
            problems.push(format!("{}:\n{out}", s.service));
        }
    }
    assert!(
        problems.is_empty(),
        "promtool check metrics:\n{}",
        problems.join("\n")
    );
}

/// Runs `promtool check metrics` on `text`: whether it passed, and what it printed.
fn check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), printed)
}

/// Metric family name -> (type, label names), from every scrape.
fn exported() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for s in SCRAPES.iter() {
        for line in s.text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                families
                    .entry(name.to_owned())
                    .or_insert_with(|| (kind.to_owned(), BTreeSet::new()));
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let series = &line[..name_end];
                let family = family_of(series, &families);
                let labels = line[name_end..]
                    .strip_prefix('{')
                    .and_then(|l| l.split_once('}'))
                    .map(|(l, _)| l)
                    .unwrap_or("");
                if let Some((_, names)) = families.get_mut(&family) {
                    for pair in split_labels(labels) {
                        if let Some((k, _)) = pair.split_once('=') {
                            names.insert(k.trim().to_owned());
                        }
                    }
                }
            }
        }
    }
    families
}

/// The family a series name belongs to (a histogram's `_bucket`, `_sum`, `_count`).
fn family_of(series: &str, families: &BTreeMap<String, (String, BTreeSet<String>)>) -> String {
    if families.contains_key(series) {
        return series.to_owned();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|(kind, _)| kind == "histogram" || kind == "summary")
        {
            return base.to_owned();
        }
    }
    series.to_owned()
}

/// `a="x",b="y,z"` -> [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn split_labels(labels: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in labels.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/roles/monitoring/files/dashboards")
}

/// Every `expr` of every panel target (rows' nested panels included) and templating query.
fn exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push((title.clone(), t["expr"].as_str().unwrap_or("").to_owned()));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or("");
            out.push((
                format!("${}", var["name"].as_str().unwrap_or("?")),
                q.to_owned(),
            ));
        }
    }
    out
}

/// The identifiers of a PromQL expression outside quotes, with whether each is followed by a
/// label matcher or grouping (`{` or `(` after `by`/`without`): (identifier, labels it names).
fn metric_references(expr: &str) -> Vec<(String, Vec<String>)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut i = 0;
    let mut quoted: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quoted {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quoted = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quoted = Some(c);
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("estuary_") {
                // The label names of a selector right after the metric name.
                let mut labels = Vec::new();
                if chars.get(i) == Some(&'{') {
                    let end = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .map_or(chars.len(), |p| i + p);
                    let inner: String = chars[i + 1..end].iter().collect();
                    for m in split_labels(&inner) {
                        let name: String = m
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            labels.push(name);
                        }
                    }
                    i = end;
                }
                out.push((word, labels));
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The label names grouped by (`by (a, b)`) anywhere in `expr`.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(p) = rest.find("by (").or_else(|| rest.find("by(")) {
        let after = &rest[p..];
        let open = after.find('(').unwrap_or(0);
        let close = after.find(')').unwrap_or(after.len());
        for l in after[open + 1..close].split(',') {
            let l = l.trim();
            if !l.is_empty() {
                out.push(l.to_owned());
            }
        }
        rest = &after[close.min(after.len())..];
    }
    out
}

#[test]
fn every_dashboard_queries_only_exported_metrics_and_labels() {
    let families = exported();
    // Labels Prometheus itself adds to every scraped series (see the role's prometheus.yml).
    let target_labels = ["job", "instance", "le"];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("ansible/roles/monitoring/files/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for want in ["edge", "origin", "control-plane", "steering"] {
        assert!(
            names.iter().any(|n| n == &format!("estuary-{want}.json")),
            "no dashboard estuary-{want}.json in {names:?}"
        );
    }

    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read dashboard");
        let d: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let uid = d["uid"].as_str().unwrap_or("").to_owned();
        assert!(
            !uid.is_empty() && uids.insert(uid.clone()),
            "{name}: missing or repeated uid {uid:?}"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let all = exprs(&d);
        assert!(all.len() >= 4, "{name}: only {} queries", all.len());
        for (panel, expr) in all {
            let refs = metric_references(&expr);
            if refs.is_empty() {
                problems.push(format!("{name} / {panel}: no estuary_ metric in `{expr}`"));
                continue;
            }
            let mut labels_of_expr: BTreeSet<String> = BTreeSet::new();
            for (metric, labels) in &refs {
                let family = family_of(metric, &families);
                match families.get(&family) {
                    None => problems.push(format!(
                        "{name} / {panel}: `{metric}` is exported by no service"
                    )),
                    Some((kind, names)) => {
                        if metric != &family && kind != "histogram" && kind != "summary" {
                            problems.push(format!(
                                "{name} / {panel}: `{metric}` is not a series of `{family}`"
                            ));
                        }
                        for l in labels {
                            if !names.contains(l) && !target_labels.contains(&l.as_str()) {
                                problems.push(format!(
                                    "{name} / {panel}: `{metric}` has no label `{l}` (it has {names:?})"
                                ));
                            }
                        }
                        labels_of_expr.extend(names.iter().cloned());
                    }
                }
            }
            for l in grouping_labels(&expr) {
                if !labels_of_expr.contains(&l) && !target_labels.contains(&l.as_str()) {
                    problems.push(format!(
                        "{name} / {panel}: groups by `{l}`, which none of its metrics has"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboard_check_tells_a_wrong_name_from_a_right_one() {
    // The check above proves something only if it refuses what is wrong.
    let families = exported();
    let refs = metric_references(
        r#"sum by (status_class) (rate(estuary_edge_requests_total{protocol="h1", node=~"$node"}[5m])) / estuary_edge_requestz_total"#,
    );
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert!(families.contains_key(&refs[0].0));
    assert_eq!(refs[0].1, vec!["protocol".to_owned(), "node".to_owned()]);
    assert!(!families.contains_key(&family_of(&refs[1].0, &families)));
    let hist = family_of("estuary_edge_request_duration_seconds_bucket", &families);
    assert_eq!(hist, "estuary_edge_request_duration_seconds");
    assert!(!families.contains_key(&family_of("estuary_edge_requests_total_bucket", &families)));
    assert_eq!(
        grouping_labels("sum by (a, b) (x) + sum by(c) (y)"),
        ["a", "b", "c"]
    );
}
