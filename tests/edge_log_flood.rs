//! Log lines a client can provoke are bounded: TLS ClientHellos with an IP address or a
//! 60 KB illegal name as SNI (each one a rustls warning) leave a bounded number of lines,
//! none longer than 8 KiB, even with rustls's warnings turned on.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A TLS 1.3 ClientHello naming `sni` as its server, split into records of at most 16 KiB.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name: list length, type host_name, name length, name.
    let mut names = vec![0u8];
    names.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    names.extend_from_slice(sni);
    let mut sn = (names.len() as u16).to_be_bytes().to_vec();
    sn.extend_from_slice(&names);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sn);
    // supported_versions: TLS 1.3.
    ext.extend_from_slice(&[0x00, 0x2b, 0, 3, 2, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in handshake.chunks(16 * 1024) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn client_provoked_log_lines_are_rate_limited_and_bounded() {
    let site = Site::new("log-flood");
    let config = site.write_config();
    let log_file = site.dir.path().join("edge.log");
    let child = Command::new(env!("CARGO_BIN_EXE_estuary"))
        .args(["edge", "--config"])
        .arg(&config)
        // An operator who wants rustls's warnings.
        .env("RUST_LOG", "info,rustls=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_file).expect("log"))
        .spawn()
        .expect("start estuary");
    let edge = EdgeProcess {
        child: Some(child),
        admin: site.admin,
        log_dir: site.dir.path().to_owned(),
        log_file: log_file.clone(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_get_raw(site.admin, "/readyz").map(|r| r.0).ok() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let long_name = vec![b'!'; 60_000];
    let hellos = [client_hello(b"192.0.2.1"), client_hello(&long_name)];
    for i in 0..200 {
        let mut s = TcpStream::connect(site.https).expect("connect");
        let _ = s.write_all(&hellos[i % 2]);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut buf);
    }
    // Still serving.
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
    let log = edge.log();
    let sni_lines = log.lines().filter(|l| l.contains("SNI")).count();
    // The test can tell: rustls did warn about the names.
    assert!(sni_lines > 0, "no SNI warning at all:\n{log}");
    assert!(sni_lines < 150, "{sni_lines} SNI lines for 200 handshakes");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 8 * 1024, "a log line of {longest} bytes");
}
