//! The one `estuary` binary: parses the command line and hands over to the service crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use estuary_chat_relay::{ChatRelayConfig, run as chat_relay_run};
use estuary_common::config::ServiceConfig;
use estuary_control_plane::{ControlPlaneConfig, run as cp_run};
use estuary_edge::EdgeConfig;
use estuary_origin::{OriginConfig, run as origin_run};
use estuary_sfu::{SfuConfig, run as sfu_run};
use estuary_steering::{SteeringConfig, run as steer_run};

/// Estuary: an open video CDN appliance.
///
/// Each subcommand runs one service or operator tool. Services read a TOML config; run
/// `estuary check-config FILE` to validate one before deploying it.
#[derive(Parser, Debug)]
#[command(name = "estuary", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an edge node: serves pre-positioned HLS/DASH over HTTP/1.1, HTTP/2 and HTTP/3.
    ///
    /// Signals: SIGHUP reloads the TLS certificate (a bad one is refused and the old one kept);
    /// SIGTERM or SIGINT drain: /readyz turns 503, listeners stop accepting, in-flight requests
    /// finish up to [shutdown] drain_timeout, then the process exits.
    Edge {
        /// The edge's TOML config (see docs/edge.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the origin: TUS uploads at /uploads/, packaging jobs, assets served at /v/<asset>/.
    ///
    /// Completed uploads are packaged by `estuary package` in a child process, one job per
    /// worker; the queue is durable (SQLite in [state] dir), so a job interrupted by a stop or
    /// a crash runs again at the next start. Signals: SIGTERM or SIGINT drain requests up to
    /// [shutdown] drain_timeout and stop the job in progress.
    Origin {
        /// The origin's TOML config (see docs/origin.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the control plane: the registry of sites and nodes, their health, the state feed.
    ///
    /// Nodes with a [control_plane] table in their config register and send heartbeats; the
    /// health monitor polls every node's /readyz and marks it down after [health] down_after
    /// failed checks, up after up_after good ones. GET /v1/state serves the versioned
    /// snapshot (ETag, long-poll with ?wait=SECONDS) that steering consumes.
    ControlPlane {
        /// The control plane's TOML config (see docs/control-plane.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the steering service: which edge serves a play request, signed playback URLs and
    /// HLS/DASH Content Steering.
    ///
    /// State: follows the control plane's state feed ([control_plane] url and token,
    /// long-polled) or reads a static [control_plane] state_file; keeps the last good snapshot
    /// while the control plane is unreachable.
    ///
    /// Choice: the client (its address, X-Forwarded-For from [steering] trusted_proxies, or
    /// ?client= for operators) is placed by the [geo] coverage zones; its site comes first,
    /// then the nearest sites. Inside a site: edges that are up and below load_threshold,
    /// pre-positioned ones first, by weighted rendezvous hashing of the asset. A full or
    /// down site overflows to the next.
    ///
    /// Endpoints: GET /v1/playback/ASSET (JSON: ranked edges with signed manifest URLs);
    /// /v1/playback/ASSET/master.m3u8 and /manifest.mpd (302 to the best edge);
    /// /v1/playback/ASSET/steered.m3u8 and /steered.mpd (the manifests with one pathway per
    /// edge; pathway ids are edge node ids); /v1/steering/hls/ASSET and /dash/ASSET (the
    /// Content Steering server players reload every [steering] ttl); /metrics, /healthz,
    /// /readyz (ready once a snapshot is loaded).
    ///
    /// Signals: SIGTERM or SIGINT: /readyz turns 503 and in-flight requests finish up to
    /// [shutdown] drain_timeout.
    Steering {
        /// The steering service's TOML config (see docs/steering.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the chat relay: WebSocket chat at /ws?token=TOKEN&device=ID (the edge's token format,
    /// acl /chat/user/USER), 1:1 and groups, sent/delivered/read receipts, presence, typing,
    /// per-device offline inboxes on the embedded SQLite store ([store] path).
    ///
    /// Frames: see the README's "Chat relay" section. Endpoints: /ws; / and /chat (the demo
    /// page); /metrics, /healthz, /readyz (on [listen] admin if set).
    ///
    /// Signals: SIGTERM or SIGINT: every WebSocket gets a close frame 1001, /readyz turns 503.
    ChatRelay {
        /// The chat relay's TOML config (see docs/chat-relay.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the SFU: WebRTC selective forwarding. Publish with WHIP (POST /whip/ROOM, an
    /// application/sdp offer, Authorization: Bearer TOKEN with the edge's token format and acl
    /// /rooms/ROOM), watch with WHEP (POST /whep/ROOM); DELETE on the Location ends a session.
    /// Media for every peer goes over the one [listen] udp port (ICE-lite).
    ///
    /// Meetings: a page at /rooms/ROOM and its WebSocket /rooms/ROOM/ws?token=; recordings:
    /// POST/GET/DELETE /recordings/ROOM (token acl /recordings/ROOM, with [recording]); cascading
    /// between sites: PUT/GET /cascade/ROOM (token acl /cascade/ROOM, sent by the control plane)
    /// and the upstream end of a link, /cascade/ROOM/ws.
    ///
    /// Endpoints: /whip/ROOM, /whep/ROOM, /rooms/ROOM, /rooms/ROOM/ws, /recordings/ROOM,
    /// /cascade/ROOM, /cascade/ROOM/ws; /metrics, /healthz, /readyz (on [listen] admin if set).
    ///
    /// Signals: SIGTERM or SIGINT: new sessions get 503, /readyz turns 503, then every peer is closed.
    Sfu {
        /// The SFU's TOML config (see docs/sfu.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the nodes the control plane knows, with their health and load.
    Nodes {
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the JSON the API returns instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Purge a path, or every path under a prefix ending in '*', on every edge.
    ///
    /// Edges that are down get the purge when they are back; the command prints where it
    /// landed. Example: estuary purge '/v/abc/*'
    Purge {
        /// A path (/v/abc/seg_001.m4s) or a prefix ending in '*' (/v/abc/*).
        target: String,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// Pre-position an asset on edges (or remove it with --remove).
    ///
    /// The control plane places the asset inside each site by rendezvous hashing over the
    /// edges that are up and have room; each chosen edge pulls every file of asset.json from a
    /// same-site peer that holds it, else from an origin, verifies them, and only then reports
    /// the asset present.
    Push {
        /// The asset id.
        asset: String,
        /// Sites to place it in, comma-separated (default: every site with an edge).
        #[arg(long, value_delimiter = ',')]
        sites: Option<Vec<String>>,
        /// Edges per site.
        #[arg(long)]
        replicas: Option<usize>,
        /// Remove the asset from every edge instead.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Pre-positioning fills: where each pushed asset is and how its fills are going.
    Fill {
        #[command(subcommand)]
        command: FillCommand,
    },
    /// Validate a service config; exits non-zero naming the bad key and why.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Package one media file into an HLS + DASH asset (CMAF, H.264 + AAC) with asset.json.
    ///
    /// Decodes INPUT once and encodes every rendition of the ladder in parallel (libx264, closed
    /// GOPs, a key frame at every segment boundary in every rendition; one 48 kHz stereo AAC
    /// rendition). The asset is built in a sibling folder `DIR.partial-<pid>` and renamed to DIR
    /// only when complete; on any error nothing is left at DIR, the error is printed on stderr
    /// and the exit code is 1.
    ///
    /// Layout: DIR/master.m3u8, DIR/manifest.mpd, DIR/asset.json and one folder per rendition
    /// (720p/, ..., audio/) with init.mp4, seg_00001.m4s, ... and index.m3u8.
    ///
    /// Default ladder (each capped at the source, never upscaled; a rung is its short side):
    /// 1080p 5 Mb/s, 720p 3 Mb/s, 480p 1.2 Mb/s, 360p 800 kb/s, 240p 400 kb/s. Also known:
    /// 2160p 14 Mb/s, 1440p 8 Mb/s, 144p 200 kb/s; any rung may name its bitrate: 720p@2500k.
    Package(PackageArgs),
    /// Mint and inspect signed-URL tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Ed25519 keys and signatures for asset manifests (the trust anchor of every fill).
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
}

/// `estuary package`.
#[derive(clap::Args, Debug)]
struct PackageArgs {
    /// The source file (any container and codecs FFmpeg decodes).
    input: PathBuf,
    /// The asset folder to create; must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated rungs, highest first or in any order.
    #[arg(long, default_value = estuary_packaging::ladder::DEFAULT_LADDER)]
    ladder: String,
    /// Segment length in whole seconds (1-30).
    #[arg(long, default_value_t = 4)]
    segment_seconds: u32,
    /// The asset id written into asset.json (default: DIR's file name).
    #[arg(long)]
    asset_id: Option<String>,
    /// The x264 preset (ultrafast ... veryslow).
    #[arg(long, default_value = "veryfast")]
    preset: String,
    /// Print JSON lines on stdout: {"event":"progress","fraction":F} now and then, and
    /// {"event":"done","asset":ID,"duration_seconds":S} at the end.
    #[arg(long)]
    progress: bool,
}

impl PackageArgs {
    /// The packager's options; `cancel` abandons the job when set.
    fn options(
        self,
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> estuary_packaging::PackageOptions {
        estuary_packaging::PackageOptions {
            input: self.input,
            out: self.out,
            ladder: self.ladder,
            segment_seconds: self.segment_seconds,
            asset_id: self.asset_id,
            preset: self.preset,
            cancel: Some(cancel),
        }
    }
}

/// Where an operator command reaches the control plane, and as whom.
#[derive(clap::Args, Debug)]
struct OperatorArgs {
    /// The control plane's base URL.
    #[arg(long, env = "ESTUARY_CONTROL_PLANE")]
    control_plane: String,
    /// An operator token.
    #[arg(long, env = "ESTUARY_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Make a key pair: prints the origin's [signing] table (secret) and the [manifest_keys]
    /// line for edges and the control plane (public).
    Keygen {
        /// The key's id, written into every signature it makes.
        #[arg(long, default_value = "origin-1")]
        key_id: String,
    },
    /// Sign DIR/asset.json into DIR/asset.json.sig (an asset folder made by `estuary package`,
    /// or one published before its origin had a key).
    Sign {
        /// The asset folder.
        dir: PathBuf,
        /// The key's id.
        #[arg(long)]
        key_id: String,
        /// The secret key, 64 hex digits (or set ESTUARY_MANIFEST_KEY).
        #[arg(long, env = "ESTUARY_MANIFEST_KEY", hide_env_values = true)]
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum FillCommand {
    /// Choose per site the assets that cover the most predicted views within its disk; with
    /// --apply, push them.
    Plan {
        /// CSV lines `asset,site,expected_views` (a header line is fine).
        #[arg(long)]
        popularity: PathBuf,
        /// Push the plan (each chosen asset with its copies in its site: more for the hits).
        #[arg(long)]
        apply: bool,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// Every placement (or one asset's) with its state: assigned, filling, present, failed
    /// (with the reason), removing.
    Status {
        /// Only this asset.
        asset: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a token; with --path also the query-form and path-form URLs.
    Sign {
        /// The key id the edge knows the secret by.
        #[arg(long)]
        key_id: String,
        /// The hex-encoded secret (or set ESTUARY_TOKEN_KEY).
        #[arg(long, env = "ESTUARY_TOKEN_KEY", hide_env_values = true)]
        key: String,
        /// Path patterns, separated by '!'; a trailing '*' matches a prefix.
        #[arg(long)]
        acl: String,
        /// Seconds from now until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Seconds from now until the token becomes valid (default: valid at once).
        #[arg(long)]
        start_in: Option<u64>,
        /// Restrict the token to a client address or CIDR.
        #[arg(long)]
        ip: Option<String>,
        /// A path to print signed URLs for.
        #[arg(long)]
        path: Option<String>,
        /// Scheme, host and port to put in front of the printed URLs, e.g. https://127.0.0.1:8443
        #[arg(long, default_value = "")]
        base: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("estuary: {e:#}");
            // A packaging failure that may pass says so, for the origin to retry it.
            match e.downcast_ref::<estuary_packaging::PackageError>() {
                Some(p) if p.retry_may_help() => {
                    ExitCode::from(estuary_packaging::error::EXIT_TEMPORARY)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Loads a service's config (an error names the file) and runs the service until it stops.
fn serve<C, F>(path: &Path, run: fn(C) -> F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = C::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    estuary_common::service::block_on(C::SERVICE, run(config))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Edge { config } => serve::<EdgeConfig, _>(&config, estuary_edge::run),
        Command::Origin { config } => serve::<OriginConfig, _>(&config, origin_run),
        Command::ControlPlane { config } => serve::<ControlPlaneConfig, _>(&config, cp_run),
        Command::Steering { config } => serve::<SteeringConfig, _>(&config, steer_run),
        Command::ChatRelay { config } => serve::<ChatRelayConfig, _>(&config, chat_relay_run),
        Command::Sfu { config } => serve::<SfuConfig, _>(&config, sfu_run),
        Command::Nodes { operator, json } => operator_call(estuary_control_plane::cli::nodes(
            &operator.control_plane,
            &operator.token,
            json,
        )),
        Command::Purge {
            target,
            operator,
            json,
        } => operator_call(estuary_control_plane::cli::purge(
            &operator.control_plane,
            &operator.token,
            &target,
            json,
        )),
        Command::Push {
            asset,
            sites,
            replicas,
            remove,
            operator,
        } => operator_call(estuary_control_plane::cli::push(
            &operator.control_plane,
            &operator.token,
            &asset,
            sites,
            replicas,
            remove,
        )),
        Command::Fill {
            command:
                FillCommand::Status {
                    asset,
                    operator,
                    json,
                },
        } => operator_call(estuary_control_plane::cli::fill_status(
            &operator.control_plane,
            &operator.token,
            asset.as_deref(),
            json,
        )),
        Command::Fill {
            command:
                FillCommand::Plan {
                    popularity,
                    apply,
                    operator,
                    json,
                },
        } => {
            let csv = std::fs::read_to_string(&popularity)
                .map_err(|e| anyhow::anyhow!("--popularity {}: {e}", popularity.display()))?;
            operator_call(estuary_control_plane::cli::fill_plan(
                &operator.control_plane,
                &operator.token,
                &csv,
                apply,
                json,
            ))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Token { command } => token(command),
        Command::Manifest { command } => manifest(command),
        Command::Package(args) => {
            // SIGTERM/SIGINT cancel the job so that it removes its staging folder.
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, cancel.clone())?;
            }
            let progress = args.progress;
            if progress {
                // Run by an origin: stop if the origin dies without stopping the job.
                estuary_packaging::cancel_when_orphaned(cancel.clone())?;
            }
            let opts = args.options(cancel);
            package(&opts, progress)
        }
    }
}

/// Runs a packaging job; with `progress`, reports as JSON lines on stdout.
fn package(opts: &estuary_packaging::PackageOptions, progress: bool) -> anyhow::Result<()> {
    use estuary_common::asset::PackageEvent;
    use std::io::Write;
    let emit = |event: &PackageEvent| {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    let mut report = |fraction: f64| {
        if progress {
            emit(&PackageEvent::Progress {
                fraction: (fraction * 1000.0).round() / 1000.0,
            });
        }
    };
    let done = estuary_packaging::package(opts, &mut report)?;
    if done.skipped_packets > 0 {
        eprintln!(
            "estuary package: warning: skipped {} undecodable packets",
            done.skipped_packets
        );
    }
    if progress {
        emit(&PackageEvent::Done {
            asset: done.asset.clone(),
            duration_seconds: done.duration_seconds,
        });
    }
    Ok(())
}

/// Runs one operator command against the control plane and prints what it returns.
fn operator_call(
    call: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print!("{}", runtime.block_on(call)?);
    Ok(())
}

/// Tells which service a config is for by its tables, then checks it as that service would
/// at start.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let table: estuary_common::config::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", file.display()))?;
    type Check = fn(&Path) -> Result<(), estuary_common::config::ConfigError>;
    fn entry<C: ServiceConfig>() -> (
        &'static str,
        fn(&estuary_common::config::Table) -> bool,
        Check,
    ) {
        (C::SERVICE, C::claims, C::check)
    }
    let services = [
        entry::<EdgeConfig>(),
        entry::<ControlPlaneConfig>(),
        entry::<SteeringConfig>(),
        entry::<OriginConfig>(),
        entry::<ChatRelayConfig>(),
        entry::<SfuConfig>(),
    ];
    let Some((service, _, check)) = services.into_iter().find(|(_, claims, _)| claims(&table))
    else {
        anyhow::bail!(
            "{}: cannot tell which service this config is for (an edge config has a [store] table, an origin config a [storage] table, a control-plane config a [database] table, a steering config a [geo] table, a chat relay config a [store] path, an SFU config a [listen] udp)",
            file.display()
        )
    };
    check(file).map_err(|e| anyhow::anyhow!("{} ({service} config): {e}", file.display()))?;
    println!("{}: a valid {service} config", file.display());
    Ok(())
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    use estuary_common::token;
    match command {
        TokenCommand::Sign {
            key_id,
            key,
            acl,
            ttl,
            start_in,
            ip,
            path,
            base,
        } => {
            let secret = token::decode_secret(&key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
            if !estuary_common::key_id::valid(&key_id) {
                anyhow::bail!("--key-id: {}", estuary_common::key_id::RULE);
            }
            if acl.is_empty() || acl.contains('~') || acl.split('!').any(|p| !p.starts_with('/')) {
                anyhow::bail!(
                    "--acl: one or more paths starting with '/', separated by '!', without '~'"
                );
            }
            let ip = ip
                .map(|s| {
                    s.parse::<ipnet::IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| anyhow::anyhow!("--ip: not an address or CIDR: {s}"))
                })
                .transpose()?;
            let now = estuary_common::unix_now();
            let claims = token::Claims {
                kid: key_id,
                acl,
                exp: now.saturating_add(ttl),
                st: start_in.map(|s| now.saturating_add(s)),
                ip,
            };
            let t = token::sign(&claims, &secret);
            println!("{t}");
            if let Some(p) = path {
                if !p.starts_with('/') {
                    anyhow::bail!("--path: must start with '/'");
                }
                let base = base.trim_end_matches('/');
                println!("{base}{p}?{}", token::query_pair(&t));
                println!("{base}{}{p}", token::path_prefix(&t));
            }
            Ok(())
        }
    }
}

fn manifest(command: ManifestCommand) -> anyhow::Result<()> {
    use estuary_common::signing::ManifestSigner;
    match command {
        ManifestCommand::Keygen { key_id } => {
            let signer =
                ManifestSigner::generate(&key_id).map_err(|e| anyhow::anyhow!("--key-id: {e}"))?;
            println!(
                "# The origin's config (keep the secret on origins only):\n[signing]\nkey_id = \"{}\"\nkey = \"{}\"\n\n# Edges' and the control plane's config:\n[manifest_keys]\n{} = \"{}\"",
                signer.key_id(),
                signer.secret_hex(),
                signer.key_id(),
                signer.public_hex()
            );
            Ok(())
        }
        ManifestCommand::Sign { dir, key_id, key } => {
            let signer = ManifestSigner::from_hex(&key_id, &key)
                .map_err(|e| anyhow::anyhow!("--key/--key-id: {e}"))?;
            let written = estuary_common::signing::sign_folder(&signer, &dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            println!("{}", written.display());
            Ok(())
        }
    }
}
