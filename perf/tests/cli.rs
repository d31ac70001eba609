//! Smoke tests of the `corewire-perf` binary: `bench --json`, and `client` against a `server`
//! subprocess on an ephemeral port.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_corewire-perf");

fn check_report(v: &serde_json::Value, server_cpu: bool) {
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["mb_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    for q in ["p50", "p99", "p999", "max"] {
        assert!(v["lat_us"][q].as_f64().unwrap() > 0.0, "lat_us.{q}: {v}");
    }
    assert!(v["cpu_us_per_msg"]["client"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["cpu_us_per_msg"]["server"].is_f64(), server_cpu, "{v}");
    assert_eq!(v["transport"], "tcp", "{v}");
}

#[test]
fn bench_json() {
    let out = Command::new(BIN)
        .args(["bench", "--secs", "0.3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report(&v, true);
    assert!(v["baseline"]["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["ratio_to_tokio"].as_f64().unwrap() > 0.0, "{v}");
}

/// Kills the server if the test fails midway.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn client_against_server() {
    let mut server = Child(
        Command::new(BIN)
            .args(["server", "--addr", "tcp://127.0.0.1:0", "--cores", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected server output {line:?}"))
        .to_string();
    let out = Command::new(BIN)
        .args([
            "client",
            "--addr",
            &addr,
            "--jobs",
            "2",
            "--concurrency",
            "4",
            "--ops",
            "300",
            "--msg-size",
            "4096",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report(&v, false);
    assert_eq!(v["msgs"], 600, "{v}");
    // SIGTERM: clean shutdown with exit status 0.
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = server.0.try_wait().unwrap() {
            assert!(st.success(), "server exit status {st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
