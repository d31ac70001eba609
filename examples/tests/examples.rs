//! Runs the example binaries as subprocesses: `echo-server` on an ephemeral tcp port with
//! `echo-client` against it, then `pingpong --both` over shm.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The examples busy-poll their cores: run one test at a time on small machines.
static SERIAL: Mutex<()> = Mutex::new(());

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn echo_client_against_echo_server_over_tcp() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Command::new(env!("CARGO_BIN_EXE_echo-server"))
        .args(["--addr", "tcp://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_string();
    assert!(
        addr.starts_with("tcp://127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });

    let client = Command::new(env!("CARGO_BIN_EXE_echo-client"))
        .args(["--addr", &addr, "--count", "200", "--timeout", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&client.stdout);
    let stderr = String::from_utf8_lossy(&client.stderr);
    let ok = client.status.success();

    // Ctrl-C: the server stops cleanly (exit 0). Without a `kill` command, just kill it.
    let interrupted = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !interrupted {
        let _ = server.kill();
    }
    let status = wait_with_timeout(&mut server, Duration::from_secs(30));
    let server_out = rest.join().unwrap();

    assert!(ok, "echo-client failed: {stdout}{stderr}");
    assert!(stdout.contains("200/200 echoes"), "{stdout}");
    assert!(server_out.contains("accepted client.1"), "{server_out}");
    if interrupted {
        assert!(
            status.success(),
            "echo-server after SIGINT: {status}\n{server_out}"
        );
        assert!(
            server_out.contains("stopping (200 messages echoed)"),
            "{server_out}"
        );
    }
}

#[test]
fn pingpong_both_over_shm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("shm://cw-pingpong-test-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pingpong"))
        .args(["--both", "--count", "500", "--addr", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "pingpong: {status}\n{stdout}{stderr}");
    assert!(stdout.contains("500 round trips"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("p50 ") && l.contains("p99.9 ")),
        "{stdout}"
    );
}
