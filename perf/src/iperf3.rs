//! iperf3 baseline: the loopback TCP bandwidth limit (one stream, client → server, the same
//! direction as the messenger's requests), measured in the same run as the benchmark.
//!
//! Runs `iperf3 -s -1 -p PORT` and `iperf3 -c 127.0.0.1 -p PORT -t SECS -J`, pinned like
//! `bench` (`-A`: client on the client's CPU, server on the server's), and reads
//! `end.sum_received.bits_per_second` from the client's JSON.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to tell someone without iperf3.
pub const MISSING: &str =
    "iperf3 is not on PATH: install it with `scripts/deps.sh bench` (Debian package iperf3)";

/// The `iperf3` executable on PATH, if any.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("iperf3"))
        .find(|p| p.is_file())
}

/// One iperf3 run.
#[derive(Debug, Clone)]
pub struct Iperf3Result {
    /// `end.sum_received.bits_per_second`.
    pub bits_per_second: f64,
    /// Seconds iperf3 ran (`-t`).
    pub secs: u64,
    /// The `-A` argument given to the client (`CLIENT,SERVER`), if pinned.
    pub affinity: Option<String>,
}

impl Iperf3Result {
    /// Received payload in MB/s (10^6 bytes per second), as the messenger's `mb_per_sec`.
    pub fn mb_per_sec(&self) -> f64 {
        self.bits_per_second / 8.0 / 1e6
    }
}

/// `end.sum_received.bits_per_second` of an iperf3 `-J` report (or its `error`).
pub fn parse_report(json: &str) -> io::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| io::Error::other(format!("iperf3 printed no JSON report ({e})")))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(io::Error::other(format!("iperf3: {err}")));
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .ok_or_else(|| io::Error::other("iperf3 report has no end.sum_received.bits_per_second"))
}

/// Kills the iperf3 server if it is still there.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Run iperf3 on loopback for `secs` (rounded up to whole seconds, at least 1), the client
/// pinned to `client_cpu` and the server to `server_cpu` when given.
pub fn run(
    secs: f64,
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
) -> io::Result<Iperf3Result> {
    let bin = find().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, MISSING))?;
    let t = secs.ceil().max(1.0) as u64;
    let port = free_port()?.to_string();
    let mut server = Command::new(&bin);
    server.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port]);
    if let Some(c) = server_cpu {
        server.args(["-A", &c.to_string()]);
    }
    let mut server = Reaped(
        server
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let affinity = match (client_cpu, server_cpu) {
        (Some(c), Some(s)) => Some(format!("{c},{s}")),
        (Some(c), None) => Some(c.to_string()),
        _ => None,
    };
    // The server needs a moment to listen; a refused connection does not use up its one test.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let mut client = Command::new(&bin);
        client.args(["-c", "127.0.0.1", "-p", &port, "-t", &t.to_string(), "-J"]);
        if let Some(a) = &affinity {
            client.args(["-A", a]);
        }
        let out = client.stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match parse_report(&text) {
            Ok(bps) => break Ok(bps),
            Err(e) => {
                let refused = text.contains("unable to connect") || text.contains("refused");
                if refused && Instant::now() < deadline {
                    if let Ok(Some(st)) = server.0.try_wait() {
                        let mut err = String::new();
                        if let Some(mut s) = server.0.stderr.take() {
                            let _ = s.read_to_string(&mut err);
                        }
                        break Err(io::Error::other(format!(
                            "iperf3 server exited ({st}): {}",
                            err.trim()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let stderr = String::from_utf8_lossy(&out.stderr);
                break Err(io::Error::other(format!(
                    "{e} (client exit {}; {})",
                    out.status,
                    stderr.trim()
                )));
            }
        }
    };
    // The server (`-1`) exits after its one test.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && matches!(server.0.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    Ok(Iperf3Result {
        bits_per_second: report?,
        secs: t,
        affinity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_received_rate_and_errors() {
        let ok = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":9.1e10},
            "sum_received":{"bits_per_second":8.0e10}}}"#;
        let bps = parse_report(ok).unwrap();
        assert_eq!(bps, 8.0e10);
        let r = Iperf3Result {
            bits_per_second: bps,
            secs: 1,
            affinity: None,
        };
        assert_eq!(r.mb_per_sec(), 10_000.0);
        let err = parse_report(
            r#"{"start":{},"error":"unable to connect to server: Connection refused"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(parse_report("not json").is_err());
        assert!(parse_report(r#"{"end":{}}"#).is_err());
    }
}
