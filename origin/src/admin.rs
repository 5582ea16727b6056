//! The origin's answers on the admin endpoints every service shares
//! (`estuary_common::service::admin`).

use crate::app::{App, check_storage};

impl estuary_common::service::admin::AdminEndpoints for App {
    fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    fn serving(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ready when the database and the asset storage answer.
    async fn check_ready(&self) -> Result<String, String> {
        if !self.db.ping().await {
            return Err("database unavailable\n".to_owned());
        }
        if let Err(e) = check_storage(self).await {
            return Err(format!("storage unavailable: {e}\n"));
        }
        Ok("ready\n".to_owned())
    }

    /// The asset counts by state come from the database.
    async fn refresh_metrics(&self) {
        if let Ok(counts) = self.db.count_by_state().await {
            self.metrics.set_asset_counts(&counts);
        }
    }
}
