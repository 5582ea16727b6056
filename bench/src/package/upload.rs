//! TUS upload throughput of `estuary origin` on loopback, with the ceilings that give it a
//! meaning: the same bytes sent by curl to a sink that discards them (loopback HTTP without a
//! disk) and written by `dd` to the same file system (disk without HTTP).
//!
//! The origin is configured so that nothing else runs while an upload is measured: its
//! packager is `/bin/false`, so the job a completed upload queues fails at once (and the
//! origin removes the uploaded file).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::httpget::Http1Conn;

pub const TOKEN: &str = "estuary-bench-upload-token-0123456789abcdef";

/// Writes `len` pseudo-random (incompressible) bytes to `path`, unless a file of that size is
/// there already.
pub fn random_file(path: &Path, len: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A running `estuary origin` with a throw-away state folder.
pub struct Origin {
    child: Child,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
}

impl Origin {
    pub fn start(estuary: &Path, work: &Path, port: u16) -> anyhow::Result<Self> {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken; pass another with --origin-port");
        }
        let dir = work.join("origin");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("origin.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"bench-origin\"\nsite = \"bench\"\n\n\
                 [listen]\nhttp = \"127.0.0.1:{port}\"\n\n\
                 [storage]\nroot = \"store\"\n\n\
                 [state]\ndir = \"state\"\n\n\
                 [auth.upload_tokens]\nbench = \"{TOKEN}\"\n\n\
                 [uploads]\nmax_size = \"64GiB\"\n\n\
                 # Jobs fail at once: nothing but the upload runs during a measurement.\n\
                 [packaging]\nprogram = \"/bin/false\"\nmax_attempts = 1\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("origin.log"))?;
        let child = Command::new(estuary)
            .arg("origin")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} origin", estuary.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut origin = Self {
            child,
            addr,
            state_dir: dir.join("state"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = origin.child.try_wait() {
                bail!(
                    "estuary origin exited ({status}) at start; see {}",
                    dir.join("origin.log").display()
                );
            }
            if let Ok(mut c) = Http1Conn::connect(addr)
                && c.get("/healthz").is_ok_and(|(s, _)| s == 200)
            {
                return Ok(origin);
            }
            if Instant::now() > deadline {
                origin.stop();
                bail!("estuary origin did not answer /healthz within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}/uploads/", self.addr)
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until no upload file is left in the state folder: the jobs of completed uploads
    /// have failed and their files are removed, so the next measurement starts clean.
    pub fn wait_uploads_gone(&self) {
        let dir = self.state_dir.join("uploads");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = std::fs::read_dir(&dir).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
                    .count()
            });
            if left == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `POST /uploads/` with curl: the new upload's URL.
pub fn create_upload(base: &str, len: u64, name: &str) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-X", "POST"])
        .args(["-H", "Tus-Resumable: 1.0.0"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", &format!("Upload-Length: {len}")])
        .args([
            "-H",
            &format!("Upload-Metadata: filename {}", base64(name.as_bytes())),
        ])
        .arg(base)
        .output()
        .context("running curl")?;
    let head = String::from_utf8_lossy(&out.stdout);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("none");
    if status != "201" {
        bail!(
            "POST {base} answered {status}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .map(|location| {
            // A path is resolved against the endpoint's scheme and authority.
            if location.starts_with('/') {
                let authority_end = base
                    .find("://")
                    .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
                    .unwrap_or(base.len());
                format!("{}{location}", &base[..authority_end])
            } else {
                location
            }
        })
        .context("201 without a Location")
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The curl command that sends `file` as one `PATCH` at offset 0 (streamed from the file, no
/// `Expect: 100-continue` round trip); it prints the status code.
pub fn curl_patch(url: &str, file: &Path) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PATCH",
    ])
    .args(["-H", "Tus-Resumable: 1.0.0"])
    .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
    .args(["-H", "Content-Type: application/offset+octet-stream"])
    .args(["-H", "Upload-Offset: 0", "-H", "Expect:"])
    .arg("-T")
    .arg(file)
    .arg(url);
    c
}

fn check_status(out: std::process::Output, what: &str, want: &str) -> anyhow::Result<()> {
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || code != want {
        bail!(
            "{what}: curl exited {} with status {code:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Seconds to upload `file` with `n` concurrent single-PATCH curl uploads (one TUS upload
/// each), from the first start to the last end; creation is not timed.
pub fn curl_uploads(origin: &Origin, file: &Path, n: usize) -> anyhow::Result<f64> {
    let len = std::fs::metadata(file)?.len();
    let urls = (0..n)
        .map(|i| create_upload(&origin.base(), len, &format!("bench-{i}.bin")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let children = urls
        .iter()
        .map(|u| {
            curl_patch(u, file)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running curl")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut result = Ok(());
    for c in children {
        let out = c.wait_with_output()?;
        if result.is_ok() {
            result = check_status(out, "PATCH", "204");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    result?;
    origin.wait_uploads_gone();
    Ok(seconds)
}

/// The tuspy client: creates the upload and sends it in chunks of `chunk` bytes, one PATCH
/// each; prints the seconds `upload()` took.
pub const TUSPY_SCRIPT: &str = r#"import sys, time
from tusclient import client
url, token, path, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = client.TusClient(url, headers={"Authorization": "Bearer " + token})
u = c.uploader(path, chunk_size=chunk, metadata={"filename": "bench-tuspy.bin"})
t = time.monotonic()
u.upload()
print(time.monotonic() - t)
"#;

pub fn tuspy_upload(origin: &Origin, work: &Path, file: &Path, chunk: u64) -> anyhow::Result<f64> {
    let script = work.join("tuspy_upload.py");
    std::fs::write(&script, TUSPY_SCRIPT)?;
    let out = Command::new("python3")
        .arg(&script)
        .arg(origin.base())
        .arg(TOKEN)
        .arg(file)
        .arg(chunk.to_string())
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "tuspy failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds = text
        .trim()
        .parse::<f64>()
        .with_context(|| format!("tuspy printed {text:?}"))?;
    origin.wait_uploads_gone();
    Ok(seconds)
}

/// A loopback HTTP/1.1 server that reads each request body and throws it away: the ceiling of
/// curl + loopback TCP without any disk.
pub struct Sink {
    pub addr: SocketAddr,
}

impl Sink {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        std::thread::Builder::new()
            .name("upload-sink".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = std::thread::Builder::new()
                        .name("upload-sink-conn".into())
                        .spawn(move || {
                            let _ = sink_connection(stream);
                        });
                }
            })?;
        Ok(Self { addr })
    }
}

fn sink_connection(stream: TcpStream) -> anyhow::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0u64;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().context("Content-Length")?;
            }
        }
        let copied = std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        if copied != length {
            bail!("the body ended early");
        }
        writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
    }
}

/// Seconds for curl to send `file` to the sink with the same PATCH request.
pub fn curl_to_sink(sink: &Sink, file: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = curl_patch(&format!("http://{}/sink", sink.addr), file).output()?;
    let seconds = start.elapsed().as_secs_f64();
    check_status(out, "PATCH to the sink", "204")?;
    Ok(seconds)
}

/// Seconds for `n` concurrent `dd` processes to each copy `file` into `dir` with 8 MiB
/// writes, either syncing every write (`oflag=dsync`: what the origin does, a sync every
/// 8 MiB) or once at the end (`conv=fsync`); from the first start to the last end.
pub fn dd_copy(file: &Path, dir: &Path, sync_every_write: bool, n: usize) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let targets: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("dd-{i}.bin"))).collect();
    let start = Instant::now();
    let children = targets
        .iter()
        .map(|target| {
            Command::new("dd")
                .arg(format!("if={}", file.display()))
                .arg(format!("of={}", target.display()))
                .arg("bs=8M")
                .arg(if sync_every_write {
                    "oflag=dsync"
                } else {
                    "conv=fsync"
                })
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("running dd")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut failure = None;
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() && failure.is_none() {
            failure = Some(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    for t in &targets {
        let _ = std::fs::remove_file(t);
    }
    if let Some(e) = failure {
        bail!("dd failed: {e}");
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_metadata() {
        assert_eq!(base64(b"bench-0.bin"), "YmVuY2gtMC5iaW4=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn the_sink_swallows_bodies() {
        let sink = Sink::start().expect("sink");
        let mut s = TcpStream::connect(sink.addr).expect("connect");
        for _ in 0..2 {
            s.write_all(b"PATCH /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .expect("write");
            let mut buf = [0u8; 27];
            s.read_exact(&mut buf).expect("read");
            assert!(buf.starts_with(b"HTTP/1.1 204"));
        }
    }
}
