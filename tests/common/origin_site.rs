//! An origin for the black-box tests: its config, folders and the real `estuary origin`
//! process, plus hand-made assets and test clips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use estuary_common::asset::{AssetManifest, FileDigest, MANIFEST_VERSION, merkle_root};

use super::{EdgeProcess, TempDir, free_port, pattern, run, start_service};

pub const UPLOAD_TOKEN: &str = "test-upload-token-0123456789";

/// An origin's folders and config.
pub struct OriginSite {
    pub dir: TempDir,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The `[storage]` table's body (default: a local root in the site folder).
    pub storage: String,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// Extra keys of the `[packaging]` table.
    pub packaging: String,
}

impl OriginSite {
    pub fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let storage = format!("root = \"{}\"", dir.path().join("storage").display());
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            storage,
            extra: String::new(),
            packaging: String::new(),
            dir,
        }
    }

    /// The local storage root (with the default `[storage]`).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn write_config(&self) -> PathBuf {
        let text = format!(
            "[node]\nid = \"origin-test\"\nsite = \"lab\"\n[listen]\nhttp = \"{}\"\nadmin = \"{}\"\n[storage]\n{}\n[state]\ndir = \"{}\"\n[auth.upload_tokens]\nops = \"{UPLOAD_TOKEN}\"\n[packaging]\nladder = [\"360p\", \"240p\"]\nsegment_seconds = 2\npreset = \"ultrafast\"\n{}\n[signing]\nkey_id = \"{}\"\nkey = \"{}\"\n{}",
            self.http,
            self.admin,
            self.storage,
            self.state_dir().display(),
            self.packaging,
            super::MANIFEST_KEY_ID,
            super::MANIFEST_SECRET_HEX,
            self.extra
        );
        let path = self.dir.path().join("origin.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the origin and waits until it is ready.
    pub fn start(&self) -> EdgeProcess {
        let config = self.write_config();
        start_service("origin", &config, self.admin, self.dir.path())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `GET /v1/assets/<id>` as JSON (`null` for a 404).
    pub fn asset_status(&self, asset: &str) -> serde_json::Value {
        let (out, _, ok) = super::curl(&[
            "-sS",
            "-H",
            &format!("Authorization: Bearer {UPLOAD_TOKEN}"),
            &self.url(&format!("/v1/assets/{asset}")),
        ]);
        assert!(ok, "curl failed");
        serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
    }

    /// Uploads `file` as asset `asset` with curl: one creation, one `PATCH` of every byte.
    /// The creation's status, and the `PATCH`'s (0 when the creation failed).
    pub fn upload(&self, file: &Path, asset: &str) -> (u16, u16) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let size = std::fs::metadata(file).expect("upload file").len();
        let auth = format!("Authorization: Bearer {UPLOAD_TOKEN}");
        let (created, headers, _) = super::fetch(
            &self.url("/uploads/"),
            &[
                "-X",
                "POST",
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                &auth,
                "-H",
                &format!("Upload-Length: {size}"),
                "-H",
                &format!(
                    "Upload-Metadata: filename {},asset {}",
                    b64("clip.mp4"),
                    b64(asset)
                ),
            ],
        );
        let Some(location) = super::header(&headers, "location") else {
            return (created, 0);
        };
        let (patched, _, _) = super::fetch(
            &self.url(location),
            &[
                "-X",
                "PATCH",
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                &auth,
                "-H",
                "Upload-Offset: 0",
                "-H",
                "Content-Type: application/offset+octet-stream",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        );
        (created, patched)
    }

    /// Polls the asset's status until `done` accepts it (or the time is up); the last status.
    pub fn wait_for_status(
        &self,
        asset: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.asset_status(asset);
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the asset's state until it is `ready` or `failed` (or the time is up).
    pub fn wait_for_asset(&self, asset: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.asset_status(asset);
            let state = v["state"].as_str().unwrap_or("");
            if state == "ready" || state == "failed" || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// The files of a small hand-made asset (what packaging would publish), without `asset.json`.
pub fn fake_asset_files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "master.m3u8".into(),
            b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n360p/index.m3u8\n"
                .to_vec(),
        ),
        (
            "360p/index.m3u8".into(),
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_00001.m4s\n#EXTINF:2.0,\nseg_00002.m4s\n#EXT-X-ENDLIST\n".to_vec(),
        ),
        ("360p/init.mp4".into(), pattern(900)),
        ("360p/seg_00001.m4s".into(), pattern(300_000)),
        ("360p/seg_00002.m4s".into(), pattern(250_001)),
    ]
}

/// The manifest of [`fake_asset_files`].
pub fn fake_manifest(asset: &str) -> AssetManifest {
    manifest_for(asset, &fake_asset_files())
}

/// The `asset.json` packaging would publish for `files`.
pub fn manifest_for(asset: &str, files: &[(String, Vec<u8>)]) -> AssetManifest {
    let mut files: Vec<FileDigest> = files
        .iter()
        .map(|(path, data)| FileDigest {
            path: path.clone(),
            size: data.len() as u64,
            sha256: hex_sha256(data),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let leaves: Vec<[u8; 32]> = files
        .iter()
        .filter(|f| f.path.ends_with(".m4s"))
        .filter_map(|f| estuary_common::asset::decode_sha256(&f.sha256))
        .collect();
    AssetManifest {
        version: MANIFEST_VERSION,
        asset: asset.into(),
        duration_seconds: 4.0,
        segment_seconds: 2.0,
        video: vec![],
        audio: vec![],
        merkle_root: hex::encode(merkle_root(&leaves)),
        files,
    }
}

/// Writes the hand-made asset under `root/v/<asset>/`, `asset.json` last.
pub fn write_fake_asset(root: &Path, asset: &str) -> AssetManifest {
    write_asset(root, asset, &fake_asset_files())
}

/// Writes `files` as asset `asset` under `root/v/<asset>/`, `asset.json` last.
pub fn write_asset(root: &Path, asset: &str, files: &[(String, Vec<u8>)]) -> AssetManifest {
    let dir = root.join("v").join(asset);
    for (path, data) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, data).expect("write");
    }
    let manifest = manifest_for(asset, files);
    std::fs::write(
        dir.join("asset.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write");
    estuary_common::signing::sign_folder(&super::manifest_signer(), &dir).expect("sign");
    manifest
}

/// Makes a short test clip with the ffmpeg CLI: `seconds` of testsrc2 at `size` with a sine
/// tone, H.264 + AAC in MP4.
pub fn make_clip(dir: &Path, name: &str, seconds: u32, size: &str) -> PathBuf {
    let out = dir.join(name);
    let video = format!("testsrc2=size={size}:rate=25:duration={seconds}");
    let audio = format!("sine=frequency=440:sample_rate=48000:duration={seconds}");
    let mut args = vec!["-f", "lavfi", "-i", &video, "-f", "lavfi", "-i", &audio];
    args.extend(super::media::H264_ARGS);
    args.extend(super::media::AAC_ARGS);
    args.push(out.to_str().expect("utf-8 path"));
    super::media::ffmpeg(&args);
    out
}

/// moto's S3 server on loopback, stopped on drop.
pub struct Moto(pub std::process::Child, pub u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_moto() -> Moto {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto (pip install 'moto[server]'; scripts/test.sh installs it)");
    let moto = Moto(child, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto did not start on port {port}");
}

impl Moto {
    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let (_, err, ok) = super::curl(&[
            "-sS",
            "-f",
            "-X",
            "PUT",
            &format!("{}/{bucket}", self.url()),
        ]);
        assert!(ok, "create bucket {bucket}: {err}");
    }

    /// Runs `body` in Python with `s3`, a boto3 client of this server (an independent S3
    /// client); its standard output.
    fn boto3(&self, body: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n{body}",
            self.url()
        );
        let out = super::run(Command::new("python3").args(["-c", &script]));
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The keys under `bucket/prefix`, listed with boto3.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.boto3(&format!(
            "for o in s3.list_objects_v2(Bucket='{bucket}', Prefix='{prefix}').get('Contents', []): print(o['Key'])"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, never answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let out = run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string()));
        assert!(out.status.success(), "kill -{sig} moto");
    }

    /// Deletes an (empty) bucket.
    pub fn delete_bucket(&self, bucket: &str) {
        let (_, err, ok) = super::curl(&[
            "-sS",
            "-f",
            "-X",
            "DELETE",
            &format!("{}/{bucket}", self.url()),
        ]);
        assert!(ok, "delete bucket {bucket}: {err}");
    }

    /// Writes one object behind the origin's back.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8], scratch: &Path) {
        let file = scratch.join("moto-put-body");
        std::fs::write(&file, data).expect("write");
        let (_, err, ok) = super::curl(&[
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/{bucket}/{key}", self.url()),
        ]);
        assert!(ok, "put {bucket}/{key}: {err}");
    }

    /// Deletes every object under `bucket/prefix` behind the origin's back (with boto3).
    pub fn delete_prefix(&self, bucket: &str, prefix: &str) {
        self.boto3(&format!(
            "for o in s3.list_objects_v2(Bucket='{bucket}', Prefix='{prefix}').get('Contents', []): s3.delete_object(Bucket='{bucket}', Key=o['Key'])"
        ));
    }

    /// The `[storage]` table body for an origin that keeps its assets in `bucket/prefix`.
    pub fn storage_config(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "url = \"s3://{bucket}/{prefix}\"\n[storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true",
            self.url()
        )
    }
}
