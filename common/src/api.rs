//! The control plane's operator API on the wire: what `estuary push`, `fill`, `purge` and the
//! dashboard send and read. The control plane serializes these and the CLI deserializes them,
//! so a field renamed on one side is a compile error on the other. Pure data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/assets/<asset>/push`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Sites to place the asset in (default: every site with an edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<Vec<String>>,
    /// Edges per site (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

/// One node an asset was placed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub node: String,
    pub site: String,
}

/// The answer to a push (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    pub asset: String,
    /// Bytes of one copy.
    pub bytes: u64,
    pub placements: Vec<Placed>,
    /// Why the push is not placed yet: it is kept and placed when it can be (`fill status`
    /// shows it as `pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// The answer to `POST /v1/assets/<asset>/remove` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReply {
    pub asset: String,
    /// Placements marked for removal.
    pub removing: usize,
}

/// One row of `GET /v1/fill`: a placement and what its node reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillRow {
    pub asset: String,
    pub node: String,
    pub site: String,
    pub bytes: u64,
    /// `pending` (not placed yet: `error` says why, `node` is empty), `assigned`, `filling`,
    /// `present`, `failed` or `removing`.
    pub state: String,
    /// Staged and verified so far while filling; all of it when present.
    pub filled_bytes: u64,
    pub error: Option<String>,
}

/// One line of the popularity file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub asset: String,
    pub site: String,
    pub views: f64,
}

/// `POST /v1/fill/plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub demand: Vec<Demand>,
    /// Push the plan, not only show it.
    #[serde(default)]
    pub apply: bool,
}

/// One chosen asset of a site's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub asset: String,
    pub views: f64,
    /// Bytes of one copy.
    pub bytes: u64,
    /// Copies in the site (on different edges).
    pub replicas: usize,
}

/// The plan of one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitePlan {
    /// `u64::MAX` when the site's edges report no disk capacity.
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub chosen: Vec<Pick>,
    pub covered_views: f64,
    pub total_views: f64,
    /// Assets left out (no room, or unknown size), with why.
    pub left_out: Vec<(String, String)>,
}

/// One placement a plan made when applied, or why a site could not take an asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub asset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReply {
    pub sites: BTreeMap<String, SitePlan>,
    pub applied: Vec<Applied>,
}

/// `POST /v1/purges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// A path (`/v/abc/seg_001.m4s`) or a prefix ending in `*` (`/v/abc/*`).
    pub target: String,
}

/// One edge's delivery of a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub node: String,
    /// `pending` (retried while the edge is down), `done` or `refused` (the edge can never
    /// apply it).
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A purge and where it has been delivered (`POST /v1/purges`, `GET /v1/purges/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeStatus {
    pub id: i64,
    pub at: u64,
    pub who: String,
    pub target: String,
    pub edges: Vec<Delivery>,
}

/// One line of the audit log (`GET /v1/audit`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: u64,
    /// The operator token's name (or the refused node's caller).
    pub who: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes and reads back; the value must come back equal.
    fn round_trip<T>(value: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(value).expect("serialize");
        let back: T = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(&back, value, "{text}");
    }

    #[test]
    fn every_operator_api_type_round_trips() {
        round_trip(&PushRequest {
            sites: Some(vec!["a".into()]),
            replicas: Some(2),
        });
        round_trip(&PushRequest::default());
        round_trip(&PushReply {
            asset: "movie".into(),
            bytes: 42,
            placements: vec![Placed {
                node: "e1".into(),
                site: "a".into(),
            }],
            pending: None,
        });
        round_trip(&PushReply {
            asset: "movie".into(),
            bytes: 0,
            placements: Vec::new(),
            pending: Some("no origin is registered and up".into()),
        });
        round_trip(&RemoveReply {
            asset: "movie".into(),
            removing: 3,
        });
        round_trip(&FillRow {
            asset: "movie".into(),
            node: "e1".into(),
            site: "a".into(),
            bytes: 10,
            state: "failed".into(),
            filled_bytes: 5,
            error: Some("digest".into()),
        });
        let pick = Pick {
            asset: "movie".into(),
            views: 1e6,
            bytes: 1 << 30,
            replicas: 2,
        };
        round_trip(&PlanRequest {
            demand: vec![Demand {
                asset: "movie".into(),
                site: "a".into(),
                views: 12.5,
            }],
            apply: true,
        });
        round_trip(&PlanReply {
            sites: BTreeMap::from([(
                "a".to_owned(),
                SitePlan {
                    capacity_bytes: u64::MAX,
                    used_bytes: 1 << 30,
                    chosen: vec![pick],
                    covered_views: 1e6,
                    total_views: 2e6,
                    left_out: vec![("big".into(), "no room".into())],
                },
            )]),
            applied: vec![
                Applied {
                    asset: "movie".into(),
                    node: Some("e1".into()),
                    site: "a".into(),
                    error: None,
                },
                Applied {
                    asset: "movie".into(),
                    node: None,
                    site: "b".into(),
                    error: Some("no edge is up".into()),
                },
            ],
        });
        round_trip(&PurgeRequest {
            target: "/v/movie/*".into(),
        });
        round_trip(&PurgeStatus {
            id: 7,
            at: 1,
            who: "ops".into(),
            target: "/v/movie/*".into(),
            edges: vec![Delivery {
                node: "e1".into(),
                state: "pending".into(),
                attempts: 2,
                last_error: Some("timed out".into()),
            }],
        });
        round_trip(&AuditEntry {
            at: 1,
            who: "ops".into(),
            action: "push".into(),
            target: "movie".into(),
            detail: "1 bytes".into(),
        });
    }

    #[test]
    fn requests_refuse_unknown_keys() {
        assert!(serde_json::from_str::<PushRequest>(r#"{"replica": 2}"#).is_err());
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"target": "/x", "y": 1}"#).is_err());
        assert!(serde_json::from_str::<PlanRequest>(r#"{"demand": [], "aply": true}"#).is_err());
    }
}

/// `POST /v1/meetings` and `POST /v1/meetings/<room>/participants`: where the (first)
/// participant is, exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingRequest {
    /// A site name: the meeting goes to an SFU there (or the nearest site with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The participant's IP address: its site is the one whose coverage (or node networks)
    /// holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// The SFU a meeting is on, and its URLs for the meeting's room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingSfu {
    pub node: String,
    pub site: String,
    /// `POST` an SDP offer here to publish (WHIP).
    pub whip: String,
    /// `POST` an SDP offer here to watch (WHEP).
    pub whep: String,
    /// The room's WebSocket (add `?token=`).
    pub ws: String,
}

/// The answer to `POST /v1/meetings` (201), `GET /v1/meetings/<room>` and
/// `POST /v1/meetings/<room>/participants` (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingReply {
    pub room: String,
    pub sfu: MeetingSfu,
    /// A room token for this room (acl `/rooms/<room>`), fresh with every answer.
    pub token: String,
    /// Unix seconds when the token expires.
    pub expires: u64,
    /// Set when `sfu` is a cascade SFU at the participant's own site, which relays the room
    /// from the meeting's SFU; absent when `sfu` is the meeting's SFU itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<MeetingCascade>,
}

/// Where a cascade SFU relays a meeting's room from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingCascade {
    /// The meeting's SFU (node id).
    pub upstream_node: String,
    /// Its site.
    pub upstream_site: String,
}

/// The body of the control plane's order to a cascade SFU, `PUT <sfu>/cascade/<room>` (with
/// a token of acl `/cascade/<room>` signed with `[meetings]`'s key): relay the room from the
/// meeting's SFU. Sent again with every participant placed there, so it must be idempotent.
/// Unknown keys are not refused, so a newer control plane can add one without older SFUs
/// turning the order down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CascadeOrder {
    /// The meeting's SFU's advertised HTTP base URL (`addresses.http`, no trailing `/`).
    pub upstream: String,
    /// The meeting's SFU's node id.
    pub upstream_node: String,
}
