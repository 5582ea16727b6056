//! The one `estuary` binary: parses the command line and hands over to the service crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Validate a service config; exits non-zero naming the bad key and why.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Mint and inspect signed-URL tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Edge { config } => {
            estuary_common::logging::init_json();
            estuary_common::tls::install_default_provider();
            let config = estuary_edge::EdgeConfig::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("edge")
                .build()?;
            runtime.block_on(estuary_edge::run(config))
        }
        Command::Origin { config } => {
            estuary_common::logging::init_json();
            estuary_common::tls::install_default_provider();
            let config = estuary_origin::OriginConfig::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("origin")
                .build()?;
            runtime.block_on(estuary_origin::run(config))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Token { command } => token(command),
    }
}

/// Tells which service a config is for by its tables, then validates it with that service.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", file.display()))?;
    if table.contains_key("store") {
        estuary_edge::EdgeConfig::load(file)
            .map_err(|e| anyhow::anyhow!("{} (edge config): {e}", file.display()))?;
        println!("{}: a valid edge config", file.display());
        return Ok(());
    }
    if table.contains_key("storage") {
        estuary_origin::OriginConfig::load(file)
            .map_err(|e| anyhow::anyhow!("{} (origin config): {e}", file.display()))?;
        println!("{}: a valid origin config", file.display());
        return Ok(());
    }
    anyhow::bail!(
        "{}: cannot tell which service this config is for (an edge config has a [store] table, an origin config a [storage] table)",
        file.display()
    )
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
            if key_id.is_empty() || key_id.contains(['~', '=', '!']) {
                anyhow::bail!("--key-id: must be non-empty without '~', '=' or '!'");
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
