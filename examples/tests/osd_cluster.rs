//! Runs `osd-cluster run --kill-restart` over tcp: three OSD processes, 2000 replicated
//! writes, osd.2 SIGKILLed midway and restarted; the run must detect it down by heartbeat in
//! time and find every acked write on all three OSDs afterwards.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn kill_and_restart_a_replica_loses_no_acked_write() {
    let pid = std::process::id();
    // Ports base..base+22 for three OSDs, derived from our pid to avoid collisions between
    // runs, below the kernel's ephemeral range (32768 up).
    let base = 20000 + (pid % 300) * 40;
    let dir = std::env::temp_dir().join(format!("osd-cluster-test-{pid}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_osd-cluster"))
        .args(["run", "--osds", "3", "--objects", "2000", "--size", "4096"])
        .args(["--kill-restart", "--transport", "tcp", "--timeout", "100"])
        .args(["--base-port", &base.to_string()])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "osd-cluster still running after 120 s:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    eprintln!("{out}");
    assert!(status.success(), "osd-cluster run: {status}\n{out}");
    assert!(
        out.contains("verified 2000 acked objects on 3 replicas each: OK"),
        "{out}"
    );
    // The heartbeat down detection, reported by an OSD and checked against the bound.
    assert!(
        out.contains("reports osd.2 down (no heartbeat for"),
        "{out}"
    );
    let detected = out
        .lines()
        .filter(|l| l.starts_with("heartbeat: ") && l.contains("detected osd.2 down"))
        .collect::<Vec<_>>();
    assert_eq!(detected.len(), 2, "{out}");
    assert!(detected.iter().all(|l| l.ends_with(": OK")), "{out}");
    assert!(out.contains("RESTART osd.2"), "{out}");
    assert!(out.contains("osd.2 is back"), "{out}");
    assert!(out.contains("writes/s") && out.contains("p99"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("osd-cluster run took {:.1} s", t0.elapsed().as_secs_f64());
}
