//! Estuary's SFU.

pub mod config;
pub mod demux;
pub mod forward;
pub mod room;

pub use config::SfuConfig;

/// Runs the SFU until SIGTERM or SIGINT.
pub async fn run(config: SfuConfig) -> anyhow::Result<()> {
    let _ = config;
    Ok(())
}
