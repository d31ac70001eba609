//! `corewire-perf sweep` on a one-point grid into a temporary directory: the CSV's header and
//! row count, and the SVG plots; then `plot` redrawing them from the CSV. Also `bench
//! --iperf3` without iperf3 on PATH (a clear message), and with it when it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_corewire-perf");

const HEADER: &str = "transport,cores,jobs,msg_size,concurrency,msgs,elapsed_s,msgs_per_sec,\
mb_per_sec,p50_us,p99_us,p999_us,max_us,cpu_us_per_msg_client,cpu_us_per_msg_server,\
tokio_msgs_per_sec,ratio_to_tokio";

const PLOTS: [&str; 3] = [
    "msgs_per_sec_vs_size.svg",
    "mb_per_sec_vs_size.svg",
    "p99_latency_vs_concurrency.svg",
];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "corewire-perf-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_svg(p: &Path) {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(text.len() > 1000, "{}: {} bytes", p.display(), text.len());
    assert!(text.starts_with("<svg "), "{}: not an SVG", p.display());
    assert!(
        text.trim_end().ends_with("</svg>"),
        "{}: truncated",
        p.display()
    );
    assert!(text.contains("<polyline"), "{}: no line drawn", p.display());
}

#[test]
fn sweep_one_point() {
    let dir = TempDir::new("sweep");
    let out_dir = dir.0.join("out");
    let out = Command::new(BIN)
        .args([
            "sweep",
            "--sizes",
            "4096",
            "--concurrency",
            "4",
            "--cores",
            "1",
            "--secs",
            "0.1",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(out_dir.join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert_eq!(lines[0], HEADER);
    let f: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(f.len(), HEADER.split(',').count(), "{csv}");
    assert_eq!(&f[..5], ["tcp", "1", "1", "4096", "4"], "{csv}");
    assert!(f[7].parse::<f64>().unwrap() > 0.0, "msgs_per_sec: {csv}");
    assert!(f[14].parse::<f64>().unwrap() > 0.0, "server cpu: {csv}");
    assert_eq!(f[15], "", "no baseline asked: {csv}");
    for name in PLOTS {
        check_svg(&out_dir.join(name));
        assert!(stdout.contains(name), "plot path not printed: {stdout}");
    }
    assert!(stdout.contains("sweep.csv"), "{stdout}");

    // Redraw from the CSV elsewhere.
    let replot = dir.0.join("replot");
    let out = Command::new(BIN)
        .arg("plot")
        .arg(out_dir.join("sweep.csv"))
        .arg("--out")
        .arg(&replot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in PLOTS {
        check_svg(&replot.join(name));
    }
}

#[test]
fn sweep_rejects_a_bad_grid() {
    let out = Command::new(BIN)
        .args(["sweep", "--sizes", "4x", "--secs", "0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad number"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_iperf3_missing_says_how_to_install() {
    let out = Command::new(BIN)
        .args(["bench", "--iperf3", "--secs", "0.1", "--no-baseline"])
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/deps.sh bench"), "{err}");
    assert!(out.stdout.is_empty(), "ran the benchmark anyway");
}

#[test]
fn bench_iperf3_json() {
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("iperf3").is_file())
    {
        eprintln!("iperf3 not installed (scripts/deps.sh bench): skipped");
        return;
    }
    let out = Command::new(BIN)
        .args([
            "bench",
            "--iperf3",
            "--msg-size",
            "64KiB",
            "--secs",
            "0.2",
            "--no-baseline",
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
    assert_eq!(v["msg_size"], 65536, "{v}");
    let iperf = v["iperf3_mb_per_sec"].as_f64().unwrap();
    let ratio = v["ratio_vs_iperf3"].as_f64().unwrap();
    assert!(iperf > 0.0, "{v}");
    let want = v["mb_per_sec"].as_f64().unwrap() / iperf;
    assert!((ratio - want).abs() < 1e-9, "{v}");
}
