//! The typed errors of a packaging job.

use std::path::PathBuf;

/// Why a packaging job failed. Every variant means nothing was published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The command line asked for something impossible (bad ladder, segment length, paths).
    #[error("{0}")]
    Usage(String),
    /// The output folder is already there; packaging never overwrites an asset.
    #[error("output {0} already exists")]
    OutputExists(PathBuf),
    /// The input cannot be opened or read as media.
    #[error("cannot read input {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    /// The input is media but not something this packager makes an asset from.
    #[error("unsupported input: {0}")]
    Unsupported(String),
    /// The input is damaged beyond repair (truncated, nothing decodable).
    #[error("damaged input: {0}")]
    Damaged(String),
    /// FFmpeg failed while filtering, encoding or muxing.
    #[error("{stage}: {source}")]
    Media {
        stage: String,
        #[source]
        source: ffmpeg_next::Error,
    },
    /// A required FFmpeg component (encoder, filter) is missing from the installed libraries.
    #[error("missing FFmpeg component: {0}")]
    Missing(String),
    /// The muxer's output did not have the shape packaging relies on.
    #[error("internal: {0}")]
    Internal(String),
    /// The job was stopped (SIGTERM or SIGINT) before it finished.
    #[error("cancelled")]
    Cancelled,
    /// Writing the asset failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exit code of `estuary package` for a failure that may pass if the job runs again
/// (EX_TEMPFAIL of sysexits.h); every other failure exits 1.
pub const EXIT_TEMPORARY: u8 = 75;

impl PackageError {
    /// Whether running the same job again may succeed: a disk, an FFmpeg or an internal error
    /// (out of memory shows as these). The input's faults (not media, unsupported, damaged),
    /// bad usage, a missing FFmpeg component and a job cancelled on purpose are not.
    pub fn retry_may_help(&self) -> bool {
        matches!(
            self,
            Self::Media { .. } | Self::Internal(_) | Self::Io { .. }
        )
    }

    pub(crate) fn media(stage: impl Into<String>) -> impl FnOnce(ffmpeg_next::Error) -> Self {
        let stage = stage.into();
        move |source| PackageError::Media { stage, source }
    }

    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| PackageError::Io { what, path, source }
    }
}
