//! Packaging workers: take queued jobs from the database and run `estuary package` on each as
//! a child process (so that a crash inside FFmpeg never takes the origin down), follow its
//! progress, check its `asset.json`, publish the result to the asset store, and record the
//! outcome. A job interrupted by a stop or a crash is queued again at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use estuary_common::asset::{AssetManifest, MANIFEST_FILE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::app::App;
use crate::db::Job;

/// Runs one worker until `stop` turns true.
pub async fn worker(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let job = match app.db.claim_job().await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "The job queue cannot be read.");
                None
            }
        };
        let Some(job) = job else {
            tokio::select! {
                _ = app.jobs_wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        tracing::info!(asset = %job.asset, attempt = job.attempt, "Packaging starts.");
        let started = Instant::now();
        let outcome = tokio::select! {
            r = run(&app, &job) => Some(r),
            // Stopping: the child is killed when `run` is dropped; the job stays in state
            // `packaging` and is queued again at the next start.
            _ = stop.changed() => None,
        };
        let Some(outcome) = outcome else {
            tracing::info!(asset = %job.asset, "Packaging was interrupted by the stop.");
            return;
        };
        let work = work_dir(&app, &job);
        let p = &app.config.packaging;
        match outcome {
            Ok(duration) => {
                app.metrics.jobs_ok.inc();
                app.metrics
                    .job_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(asset = %job.asset, seconds = started.elapsed().as_secs_f64(), "The asset is ready.");
                if let Err(e) = app.db.finish_job(&job.asset, Ok(duration), false).await {
                    tracing::error!(error = %e, asset = %job.asset, "The job's end could not be recorded.");
                }
                let _ = std::fs::remove_file(&job.source);
                let _ = std::fs::remove_dir_all(work);
            }
            Err(failure) if failure.retry && job.attempt < p.max_attempts => {
                app.metrics.jobs_retried.inc();
                let delay = backoff(p.retry_backoff, p.retry_backoff_max, job.attempt);
                let at = estuary_common::unix_now() + delay.as_secs().max(1);
                tracing::warn!(
                    asset = %job.asset,
                    attempt = job.attempt,
                    reason = %failure.reason,
                    retry_in_seconds = delay.as_secs_f64(),
                    "A packaging attempt failed for a reason that may pass; the job runs again later."
                );
                let reason = format!(
                    "attempt {} failed: {}",
                    job.attempt,
                    without_local_paths(&failure.reason, &app.config.state.dir)
                );
                if let Err(e) = app.db.retry_job(&job.asset, reason, at).await {
                    tracing::error!(error = %e, asset = %job.asset, "The job's retry could not be recorded.");
                }
                // The upload is kept, and so is a packaged output whose publishing failed:
                // the next attempt publishes it without packaging it again.
                if !failure.keep_output {
                    let _ = std::fs::remove_dir_all(work);
                }
            }
            Err(failure) => {
                app.metrics.jobs_failed.inc();
                tracing::warn!(asset = %job.asset, reason = %failure.reason, raw = job.raw.is_some(), "Packaging failed.");
                // A half-published asset's objects go; what cannot be removed now (the store
                // being down) the sweep at the next start removes.
                if let Err(e) = app.storage.remove_asset(&job.asset).await {
                    app.metrics.storage_errors.inc();
                    tracing::error!(error = %e, asset = %job.asset, "A failed asset's objects could not be removed.");
                }
                app.forget_manifest(&job.asset);
                // The reason is shown to uploaders: no folder of this machine in it.
                let mut reason = without_local_paths(&failure.reason, &app.config.state.dir);
                if failure.retry {
                    reason = format!(
                        "{reason} (after {} attempts; POST /v1/assets/{}/retry runs it again)",
                        job.attempt, job.asset
                    );
                }
                // An upload that failed through no fault of its own is kept for a retry.
                if let Err(e) = app
                    .db
                    .finish_job(&job.asset, Err(reason), failure.retry)
                    .await
                {
                    tracing::error!(error = %e, asset = %job.asset, "The job's end could not be recorded.");
                }
                if !failure.retry {
                    let _ = std::fs::remove_file(&job.source);
                }
                let _ = std::fs::remove_dir_all(work);
            }
        }
    }
}

/// The wait before attempt `attempt + 1`: `first`, doubled for each attempt after the first,
/// at most `max`.
pub fn backoff(first: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    first.saturating_mul(1 << doublings).min(max)
}

fn work_dir(app: &App, job: &Job) -> PathBuf {
    app.work_dir.join(&job.asset)
}

/// Why an attempt failed, and whether running it again may help.
#[derive(Debug)]
struct Failure {
    reason: String,
    /// The failure was not the input's fault (storage, a signal, a transient packager error).
    retry: bool,
    /// The packaged output is complete and checked (only publishing failed).
    keep_output: bool,
}

impl Failure {
    /// A failure that running the job again will not cure (the input, the config).
    fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
            keep_output: false,
        }
    }

    /// A failure that may pass.
    fn transient(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: true,
            keep_output: false,
        }
    }
}

/// The packager's exit code for a failure that may pass if the job runs again (EX_TEMPFAIL,
/// as `estuary package` documents it); any other failure is the input's or the command's.
const EXIT_TEMPORARY: i32 = 75;

/// Packages and publishes one job; the asset's duration, or why it failed. A packaged output
/// kept from an earlier attempt whose publishing failed is published without packaging again.
async fn run(app: &Arc<App>, job: &Job) -> Result<f64, Failure> {
    if !Path::new(&job.source).is_file() {
        return Err(Failure::permanent("the uploaded file is gone"));
    }
    let work = work_dir(app, job);
    let out = work.join(&job.asset);
    if let Some(raw) = &job.raw {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&out)
            .map_err(|e| Failure::transient(format!("work folder: {e}")))?;
        let (source, asset, raw, dir) = (
            PathBuf::from(&job.source),
            job.asset.clone(),
            raw.clone(),
            out.clone(),
        );
        tokio::task::spawn_blocking(move || raw_output(&source, &asset, &raw, &dir))
            .await
            .map_err(|e| Failure::transient(format!("the raw publishing task: {e}")))??;
        check_output(&out, &job.asset)
            .await
            .map_err(Failure::permanent)?;
        publish(app, job, &out).await?;
        return Ok(0.0);
    }
    let kept = match tokio::fs::try_exists(out.join(MANIFEST_FILE)).await {
        Ok(true) => check_output(&out, &job.asset).await.ok(),
        _ => None,
    };
    let (manifest, duration) = match kept {
        Some(manifest) => {
            tracing::info!(asset = %job.asset, "The output of an earlier attempt is published again.");
            (manifest, None)
        }
        None => {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work)
                .map_err(|e| Failure::transient(format!("work folder: {e}")))?;
            let duration = package(app, job, &out).await?;
            let manifest = check_output(&out, &job.asset)
                .await
                .map_err(Failure::permanent)?;
            (manifest, duration)
        }
    };
    publish(app, job, &out).await?;
    Ok(duration.unwrap_or(manifest.duration_seconds))
}

/// Signs the checked output in `out` and publishes it (`asset.json` last).
async fn publish(app: &Arc<App>, job: &Job, out: &Path) -> Result<(), Failure> {
    sign_output(app, out).await.map_err(Failure::permanent)?;
    if let Err(e) = app.storage.publish(&job.asset, out).await {
        if e.is_store() {
            app.metrics.storage_errors.inc();
        }
        return Err(Failure {
            reason: format!("publishing: {e}"),
            retry: true,
            keep_output: true,
        });
    }
    app.forget_manifest(&job.asset);
    Ok(())
}

/// How much of a raw upload's start the type check reads (every signature `infer` knows
/// lies within it).
const SNIFF_BYTES: usize = 8192;

/// A raw upload (chat media) as an asset in `dir`: the file as uploaded, named
/// `media.<ext>`, and an `asset.json` listing it with its size and sha-256, as packaged assets
/// list theirs. The bytes must be of the declared type (by their signature) and exactly the
/// declared size; anything else fails the asset for good, and nothing is published.
fn raw_output(source: &Path, asset: &str, raw: &crate::db::Raw, dir: &Path) -> Result<(), Failure> {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let Some(media) = estuary_common::media::MediaType::from_mime(&raw.mime) else {
        return Err(Failure::permanent(format!(
            "{} is not a chat media type",
            raw.mime
        )));
    };
    let mut input = std::fs::File::open(source)
        .map_err(|e| Failure::permanent(format!("the uploaded file: {e}")))?;
    let file_name = media.file_name();
    let mut output = std::fs::File::create(dir.join(&file_name))
        .map_err(|e| Failure::transient(format!("{file_name}: {e}")))?;
    let mut hash = sha2::Sha256::new();
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    let mut size: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| Failure::transient(format!("the uploaded file: {e}")))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        hash.update(chunk);
        output
            .write_all(chunk)
            .map_err(|e| Failure::transient(format!("{file_name}: {e}")))?;
        size += n as u64;
        if size > raw.size {
            break;
        }
    }
    if size != raw.size {
        return Err(Failure::permanent(format!(
            "the upload holds {size} bytes, its credential declared {}",
            raw.size
        )));
    }
    if !infer::is_mime(&head, media.mime) {
        let seen = infer::get(&head).map_or("of no known type", |t| t.mime_type());
        return Err(Failure::permanent(format!(
            "the file is not {}: its bytes are {seen}",
            media.mime
        )));
    }
    output
        .sync_all()
        .map_err(|e| Failure::transient(format!("{file_name}: {e}")))?;
    let files = vec![estuary_common::asset::FileDigest {
        path: file_name,
        size,
        sha256: hex::encode(hash.finalize()),
    }];
    let mut manifest = AssetManifest {
        version: estuary_common::asset::MANIFEST_VERSION,
        asset: asset.to_owned(),
        duration_seconds: 0.0,
        segment_seconds: 0.0,
        video: Vec::new(),
        audio: Vec::new(),
        files,
        merkle_root: String::new(),
    };
    manifest.merkle_root = manifest.computed_merkle_root().unwrap_or_default();
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Failure::permanent(format!("{MANIFEST_FILE}: {e}")))?;
    std::fs::write(dir.join(MANIFEST_FILE), text)
        .map_err(|e| Failure::transient(format!("{MANIFEST_FILE}: {e}")))
}

/// Runs `estuary package` on the job's upload into `out`; the duration it reports.
async fn package(app: &Arc<App>, job: &Job, out: &Path) -> Result<Option<f64>, Failure> {
    let p = &app.config.packaging;
    let program = match &p.program {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| Failure::permanent(format!("cannot find this program: {e}")))?,
    };
    let mut child = Command::new(program)
        .arg("package")
        .arg(&job.source)
        .arg("--out")
        .arg(out)
        .args(["--asset-id", &job.asset])
        .args(["--ladder", &p.ladder.join(",")])
        .args(["--segment-seconds", &p.segment_seconds.to_string()])
        .args(["--preset", &p.preset])
        .arg("--progress")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::transient(format!("cannot start the packager: {e}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let progress = async {
        let mut duration = None;
        let Some(stdout) = stdout else {
            return duration;
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut last = -1.0;
        while let Ok(Some(line)) = lines.next_line().await {
            use estuary_common::asset::PackageEvent;
            match serde_json::from_str::<PackageEvent>(&line) {
                Ok(PackageEvent::Progress { fraction }) if fraction - last >= 0.01 => {
                    last = fraction;
                    let _ = app.db.set_progress(&job.asset, fraction).await;
                }
                Ok(PackageEvent::Done {
                    duration_seconds, ..
                }) => duration = Some(duration_seconds),
                _ => {}
            }
        }
        duration
    };
    let errors = async {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        text
    };
    let waited = tokio::time::timeout(p.timeout, async {
        let (duration, errors, status) = tokio::join!(progress, errors, child.wait());
        (duration, errors, status)
    })
    .await;
    let Ok((duration, errors, status)) = waited else {
        return Err(Failure::permanent(format!(
            "packaging took longer than {} s",
            p.timeout.as_secs()
        )));
    };
    let status = status.map_err(|e| Failure::transient(format!("the packager: {e}")))?;
    if status.success() {
        return Ok(duration);
    }
    let last_line = errors
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(500).collect::<String>());
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(signal) = status.signal() {
        // Killed (the OOM killer sends SIGKILL) or crashed: nothing says the input is at fault.
        let mut reason = format!(
            "the packager was killed by signal {signal}{}",
            signal_name(signal).map_or(String::new(), |n| format!(" ({n})"))
        );
        if let Some(line) = last_line {
            reason = format!("{reason}; its last words: {line}");
        }
        return Err(Failure::transient(reason));
    }
    let reason = last_line.unwrap_or_else(|| match status.code() {
        Some(code) => format!("the packager failed with exit code {code} and no message"),
        None => "the packager failed without a message".to_owned(),
    });
    if status.code() == Some(EXIT_TEMPORARY) {
        Err(Failure::transient(reason))
    } else {
        Err(Failure::permanent(reason))
    }
}

/// The name of a signal that ends processes.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

/// Signs the checked `asset.json` with the origin's key, as `asset.json.sig` beside it
/// (published before `asset.json`, like every other file). Without a key the asset is
/// published unsigned, and edges will not pre-position it.
async fn sign_output(app: &App, dir: &Path) -> Result<(), String> {
    let Some(signing) = &app.config.signing else {
        return Ok(());
    };
    let signer = signing.signer().map_err(|e| e.to_string())?;
    let text = tokio::fs::read(dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    tokio::fs::write(
        dir.join(estuary_common::signing::SIGNATURE_FILE),
        signer.sign(&text),
    )
    .await
    .map_err(|e| format!("{}: {e}", estuary_common::signing::SIGNATURE_FILE))
}

/// Reads the packaged asset's manifest and checks it against the files: names, sizes, the
/// Merkle root. A packager bug must not publish an asset that edges would refuse.
async fn check_output(dir: &Path, asset: &str) -> Result<AssetManifest, String> {
    let text = tokio::fs::read(dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| format!("the packager wrote no {MANIFEST_FILE}: {e}"))?;
    let manifest: AssetManifest =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    if manifest.asset != asset {
        return Err(format!("{MANIFEST_FILE} names asset {:?}", manifest.asset));
    }
    if manifest.computed_merkle_root().as_deref() != Some(manifest.merkle_root.as_str()) {
        return Err(format!(
            "{MANIFEST_FILE}: the Merkle root does not match its files"
        ));
    }
    for f in &manifest.files {
        if !estuary_common::asset::valid_file_path(&f.path) {
            return Err(format!("{MANIFEST_FILE}: bad file name {:?}", f.path));
        }
        let meta = tokio::fs::metadata(dir.join(&f.path))
            .await
            .map_err(|e| format!("{}: {e}", f.path))?;
        if meta.len() != f.size {
            return Err(format!(
                "{}: {} bytes, {MANIFEST_FILE} says {}",
                f.path,
                meta.len(),
                f.size
            ));
        }
    }
    Ok(manifest)
}

/// `text` with the origin's state folder (uploads, work folders, database) and any other
/// absolute path replaced by a short placeholder: failure reasons reach uploaders, and the
/// machine's layout is none of their business (the log keeps the full text).
fn without_local_paths(text: &str, state_dir: &Path) -> String {
    let state = state_dir.to_string_lossy();
    let text = if state.len() > 1 {
        text.replace(state.as_ref(), "<state>")
    } else {
        text.to_owned()
    };
    text.split(' ')
        .map(|word| {
            let bare = word.trim_start_matches(['"', '\'', '(']);
            if bare.starts_with('/') && bare.len() > 1 {
                let end = bare.trim_end_matches(['"', '\'', ')', ':', ',']);
                let tail = &bare[end.len()..];
                let lead = &word[..word.len() - bare.len()];
                let name = end.rsplit('/').next().unwrap_or("");
                format!("{lead}<path>/{name}{tail}")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn failure_reasons_name_no_local_folder() {
        let state = Path::new("/var/lib/estuary/origin");
        let r = without_local_paths(
            "/var/lib/estuary/origin/work/abc-1/x.mp4: Invalid data found when processing input",
            state,
        );
        assert_eq!(
            r,
            "<state>/work/abc-1/x.mp4: Invalid data found when processing input"
        );
        let r = without_local_paths("cannot open \"/srv/media/in.mp4\": denied", state);
        assert_eq!(r, "cannot open \"<path>/in.mp4\": denied");
        assert_eq!(
            without_local_paths("no video stream", state),
            "no video stream"
        );
    }
}
