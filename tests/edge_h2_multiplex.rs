//! Many HTTP/2 streams on one TLS connection: small and large responses interleaved, some read
//! slowly, all byte-exact. The edge coalesces what one poll of an HTTP/2 connection writes
//! into one TLS write (`edge/src/cork.rs`); this checks that nothing written is held back
//! (a held-back frame would stall a transfer until the next keep-alive PING, 20 s later) and
//! that the order of frames survives.

mod common;

use std::fmt::Write as _;
use std::process::Command;

use common::*;

#[test]
fn many_streams_on_one_connection_arrive_whole() {
    let site = Site::new("h2-multiplex");
    let dir = site.content.join("pub/mix");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Playlist-sized, segment-sized and large objects, each with different bytes.
    let sizes = [
        6_000usize, 500, 150_000, 2_000_000, 40, 600_000, 9_000, 2_500_000,
    ];
    let mut files = Vec::new();
    for i in 0..48 {
        let size = sizes[i % sizes.len()] + i;
        let body: Vec<u8> = pattern(size + 7)[7..]
            .iter()
            .map(|b| b ^ (i as u8))
            .collect();
        let name = format!("obj-{i:02}.bin");
        std::fs::write(dir.join(&name), &body).expect("write");
        files.push((name, body));
    }
    let _edge = site.start();
    let out = site.content.parent().expect("site dir").join("h2-out");
    std::fs::create_dir_all(&out).expect("mkdir");

    // One curl config: every file, each to its own output. curl multiplexes them over one
    // HTTP/2 connection (--parallel with --http2).
    let mut config = String::new();
    for (name, _) in &files {
        writeln!(
            config,
            "url = \"{}\"",
            site.surl(&format!("/pub/mix/{name}"))
        )
        .expect("fmt");
        writeln!(config, "output = \"{}\"", out.join(name).display()).expect("fmt");
    }
    let config_path = out.join("curl.cfg");
    std::fs::write(&config_path, config).expect("write");
    let cacert = site.cert.to_string_lossy().into_owned();
    for rate in [None, Some("3M")] {
        for (name, _) in &files {
            let _ = std::fs::remove_file(out.join(name));
        }
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--http2",
            "--cacert",
            &cacert,
            "--parallel",
            "--parallel-max",
            "48",
            // A frame held back by the edge would stall until its next PING (20 s).
            "--max-time",
            "15",
            "-w",
            "%{http_version} %{num_connects}\\n",
        ]);
        if let Some(rate) = rate {
            cmd.args(["--limit-rate", rate]);
        }
        cmd.arg("-K").arg(&config_path);
        let output = run(&mut cmd);
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "rate {rate:?}: {report} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines.len(), files.len(), "{report}");
        assert!(lines.iter().all(|l| l.starts_with("2 ")), "{report}");
        // Multiplexed: most transfers reused a connection rather than opening their own.
        let connects: u32 = lines
            .iter()
            .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
            .sum();
        assert!(
            connects < 8,
            "{connects} connections for {} transfers",
            files.len()
        );
        for (name, body) in &files {
            let got = std::fs::read(out.join(name)).expect("output");
            assert!(
                got == *body,
                "rate {rate:?}: {name} differs ({} vs {} bytes)",
                got.len(),
                body.len()
            );
        }
    }
}
