//! The operator CLI's client side (`estuary nodes`, ...): calls the API with an operator token
//! and formats what it returns.

use estuary_common::cp::NodeState;

/// One API call with a bearer token (and a JSON body, if any); the answer's body on 2xx, else
/// an error with the status and the server's message.
async fn call(
    method: http::Method,
    base: &str,
    token: &str,
    path: &str,
    body: Option<String>,
    timeout: std::time::Duration,
) -> anyhow::Result<bytes::Bytes> {
    // A control plane behind TLS with a private CA: `ESTUARY_CA_FILE` names its bundle.
    let client = estuary_common::http::HttpClient::new(estuary_common::http::ClientOptions {
        timeout,
        max_body: 256 << 20,
        ca_file: std::env::var_os("ESTUARY_CA_FILE").map(std::path::PathBuf::from),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("ESTUARY_CA_FILE: {e}"))?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let mut headers = vec![(http::header::AUTHORIZATION, auth.as_str())];
    if body.is_some() {
        headers.push((http::header::CONTENT_TYPE, "application/json"));
    }
    let request = estuary_common::http::request(
        method,
        &url,
        &headers,
        bytes::Bytes::from(body.unwrap_or_default()),
    )?;
    let response = client
        .send(request)
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status();
    let body = response.into_body();
    if !status.is_success() {
        anyhow::bail!("{url}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}

/// `GET <base><path>` with a bearer token.
pub async fn get(base: &str, token: &str, path: &str) -> anyhow::Result<bytes::Bytes> {
    let limit = std::time::Duration::from_secs(10);
    call(http::Method::GET, base, token, path, None, limit).await
}

/// The node list as a table for people.
pub fn nodes_table(nodes: &[NodeState], now: u64) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<10} {:<5} {:>9} {:>10} {:>8}  {}\n",
        "NODE", "SITE", "ROLE", "UP", "REQ/S", "MB/S", "BEAT", "WHY DOWN"
    );
    for n in nodes {
        out.push_str(&format!(
            "{:<20} {:<12} {:<10} {:<5} {:>9.1} {:>10.2} {:>7}s  {}\n",
            n.id,
            n.site,
            n.role.as_str(),
            if n.up { "yes" } else { "no" },
            n.load.requests_per_second,
            n.load.bytes_per_second / 1e6,
            now.saturating_sub(n.last_heartbeat),
            n.down_reason.as_deref().unwrap_or("")
        ));
    }
    out
}

/// `estuary nodes`: prints the registered nodes (or their JSON).
pub async fn nodes(base: &str, token: &str, json: bool) -> anyhow::Result<String> {
    let body = get(base, token, "/v1/nodes").await?;
    if json {
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    let nodes: Vec<NodeState> = serde_json::from_slice(&body)?;
    Ok(nodes_table(&nodes, estuary_common::unix_now()))
}

/// `POST <base><path>` with a JSON body and a bearer token.
pub async fn post(
    base: &str,
    token: &str,
    path: &str,
    body: String,
) -> anyhow::Result<bytes::Bytes> {
    let limit = std::time::Duration::from_secs(30);
    call(http::Method::POST, base, token, path, Some(body), limit).await
}

/// `estuary purge TARGET`: purges a path or prefix on every edge and prints where it landed.
pub async fn purge(base: &str, token: &str, target: &str, json: bool) -> anyhow::Result<String> {
    let body = serde_json::to_string(&estuary_common::api::PurgeRequest {
        target: target.to_owned(),
    })?;
    let answer = post(base, token, "/v1/purges", body).await?;
    if json {
        return Ok(String::from_utf8_lossy(&answer).into_owned());
    }
    let status: estuary_common::api::PurgeStatus = serde_json::from_slice(&answer)?;
    let mut out = format!("purge {} of {}\n", status.id, status.target);
    for d in &status.edges {
        let what = match (d.state.as_str(), &d.last_error) {
            ("done", _) => "purged".to_owned(),
            (_, Some(e)) => format!("pending (will retry): {e}"),
            _ => "pending (the edge is down; it gets the purge when it is back)".to_owned(),
        };
        out.push_str(&format!("  {:<20} {what}\n", d.node));
    }
    if status.edges.is_empty() {
        out.push_str("  (no edges registered)\n");
    }
    Ok(out)
}

/// `estuary push ASSET [--sites a,b] [--replicas N]` or `--remove`.
pub async fn push(
    base: &str,
    token: &str,
    asset: &str,
    sites: Option<Vec<String>>,
    replicas: Option<usize>,
    remove: bool,
) -> anyhow::Result<String> {
    if remove {
        let answer = post(
            base,
            token,
            &format!("/v1/assets/{asset}/remove"),
            String::new(),
        )
        .await?;
        return Ok(String::from_utf8_lossy(&answer).into_owned());
    }
    let body = serde_json::to_string(&estuary_common::api::PushRequest { sites, replicas })?;
    let answer = post(base, token, &format!("/v1/assets/{asset}/push"), body).await?;
    let reply: estuary_common::api::PushReply = serde_json::from_slice(&answer)?;
    if let Some(why) = &reply.pending {
        return Ok(format!(
            "{} is pending: {why}.\nThe control plane places it as soon as it can; follow with `estuary fill status`.\n",
            reply.asset
        ));
    }
    let mut out = format!("{} ({} bytes) placed on:\n", reply.asset, reply.bytes);
    for p in &reply.placements {
        out.push_str(&format!("  {:<20} site {}\n", p.node, p.site));
    }
    out.push_str("Each edge fills it on its next heartbeat; follow with `estuary fill status`.\n");
    Ok(out)
}

/// `estuary fill status [ASSET]`.
pub async fn fill_status(
    base: &str,
    token: &str,
    asset: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let path = match asset {
        Some(a) => format!("/v1/fill?asset={a}"),
        None => "/v1/fill".to_owned(),
    };
    let body = get(base, token, &path).await?;
    if json {
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    let rows: Vec<estuary_common::api::FillRow> = serde_json::from_slice(&body)?;
    let mut out = format!(
        "{:<24} {:<20} {:<12} {:<10} {}\n",
        "ASSET", "NODE", "SITE", "STATE", "ERROR"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<24} {:<20} {:<12} {:<10} {}\n",
            r.asset,
            r.node,
            r.site,
            r.state,
            r.error.as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}

/// `estuary fill plan --popularity FILE.csv [--apply]`.
pub async fn fill_plan(
    base: &str,
    token: &str,
    csv: &str,
    apply: bool,
    json: bool,
) -> anyhow::Result<String> {
    let demand = crate::plan::parse_csv(csv).map_err(|e| anyhow::anyhow!("--popularity: {e}"))?;
    let body = serde_json::to_string(&estuary_common::api::PlanRequest { demand, apply })?;
    let answer = post(base, token, "/v1/fill/plan", body).await?;
    if json {
        return Ok(String::from_utf8_lossy(&answer).into_owned());
    }
    let reply: estuary_common::api::PlanReply = serde_json::from_slice(&answer)?;
    let mut out = String::new();
    for (site, plan) in &reply.sites {
        let cap = plan.capacity_bytes;
        let cap_text = if cap == u64::MAX {
            "unknown".to_owned()
        } else {
            format!("{:.1} GB", cap as f64 / 1e9)
        };
        out.push_str(&format!(
            "site {site}: covers {:.0} of {:.0} predicted views with {:.1} GB (disk {cap_text})\n",
            plan.covered_views,
            plan.total_views,
            plan.used_bytes as f64 / 1e9,
        ));
        for p in &plan.chosen {
            out.push_str(&format!(
                "  + {:<24} {:>10.0} views {:>10.1} MB x{}\n",
                p.asset,
                p.views,
                p.bytes as f64 / 1e6,
                p.replicas
            ));
        }
        for (asset, why) in &plan.left_out {
            out.push_str(&format!("  - {asset:<24} {why}\n"));
        }
    }
    if apply {
        out.push_str(&format!(
            "applied: {} placements (follow with `estuary fill status`)\n",
            reply.applied.iter().filter(|a| a.node.is_some()).count()
        ));
    } else {
        out.push_str("(a plan only: run again with --apply to push it)\n");
    }
    Ok(out)
}
