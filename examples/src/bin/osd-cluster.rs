//! `osd-cluster`: a small simulated Ceph-style cluster on one machine.
//!
//! `osd-cluster run` starts N OSD processes (this binary, `osd-cluster osd --id I ...`), each
//! with a public, a cluster and a heartbeat messenger; a client (in the orchestrator process)
//! writes objects to their primaries, which replicate them to two replicas over lossless
//! peer sessions and ack after both; heartbeats report a killed OSD down within the grace
//! period. With `--kill-restart`, a replica OSD is SIGKILLed midway and restarted, and the
//! run checks that no acknowledged write was lost: every acked object is read back from all
//! three of its OSDs' files, byte-exact. It prints throughput and write latency.
//!
//! Writes wait for both replicas: there is no degraded mode (while a replica is down, writes
//! replicated to it wait for its return; the primary sends its unacked repops again when
//! the restarted replica's session resets).
//!
//! ```sh
//! cargo run --release -p corewire-examples --bin osd-cluster -- run --objects 20000 --kill-restart
//! cargo run --release -p corewire-examples --bin osd-cluster -- run --transport shm --osds 5
//! ```

#[path = "../osd/mod.rs"]
mod osd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use corewire_examples::Args;
use corewire_transport::TransportKind;

use osd::daemon::{run_osd, OsdOpts};
use osd::orchestrator::{run, RunOpts};
use osd::Layout;

const USAGE: &str =
    "usage: osd-cluster run [--osds 3] [--transport tcp|shm] [--objects N] [--size BYTES]
                        [--inflight C] [--grace-ms 2000] [--kill-restart] [--kill-id 2]
                        [--dir DIR] [--base-port 6800] [--timeout SECS] [--cores 1] [--fsync]
       osd-cluster osd --id I --osds N --transport tcp|shm --dir DIR --grace-ms MS
                        [--base-port P] [--run-id R] [--cores 1] [--fsync]
  run: start N OSD processes, write N objects through their primaries (replicated three
       times), print throughput and latency; --kill-restart SIGKILLs osd.2 (--kill-id)
       midway, restarts it, and verifies that every acked write is on all its OSDs.
  tcp: OSD i listens on 127.0.0.1:BASE+10i (public), +1 (cluster), +2 (heartbeat);
  shm: on shm://osdcluster-RUN-i-{public,cluster,hb}.";

struct Common {
    osds: usize,
    transport: TransportKind,
    base_port: u16,
    run_id: u32,
    grace_ms: u64,
    dir: Option<PathBuf>,
    cores: usize,
    fsync: bool,
}

impl Common {
    /// Parse `f` if it is a flag both subcommands take.
    fn flag(&mut self, a: &mut Args, f: &str) -> Result<bool, String> {
        match f {
            "--osds" => self.osds = a.parse(f)?,
            "--transport" => {
                self.transport = match a.value(f)?.as_str() {
                    "tcp" => TransportKind::Tcp,
                    "shm" => TransportKind::Shm,
                    t => return Err(format!("--transport {t}: tcp or shm\n{USAGE}")),
                }
            }
            "--base-port" => self.base_port = a.parse(f)?,
            "--run-id" => self.run_id = a.parse(f)?,
            "--grace-ms" => self.grace_ms = a.parse::<u64>(f)?.max(40),
            "--dir" => self.dir = Some(PathBuf::from(a.value(f)?)),
            "--cores" => self.cores = a.parse::<usize>(f)?.max(1),
            "--fsync" => self.fsync = true,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn layout(&self) -> Result<Layout, String> {
        let l = Layout {
            osds: self.osds,
            transport: self.transport,
            base_port: self.base_port,
            run_id: self.run_id,
            grace: Duration::from_millis(self.grace_ms),
        };
        l.check()?;
        Ok(l)
    }
}

fn main_run(mut a: Args, mut c: Common) -> Result<(), String> {
    c.run_id = std::process::id();
    let (mut objects, mut size, mut inflight, mut kill_restart, mut victim, mut timeout) =
        (10_000u64, 4096usize, 16usize, false, 2usize, 120u64);
    while let Some(f) = a.next_flag() {
        if c.flag(&mut a, &f)? {
            continue;
        }
        match f.as_str() {
            "--objects" => objects = a.parse(&f)?,
            "--size" => size = a.parse(&f)?,
            "--inflight" => inflight = a.parse::<usize>(&f)?.max(1),
            "--kill-restart" => kill_restart = true,
            "--kill-id" => victim = a.parse(&f)?,
            "--timeout" => timeout = a.parse(&f)?,
            _ => return Err(a.unknown(&f)),
        }
    }
    let layout = c.layout()?;
    if victim >= layout.osds {
        return Err(format!("--kill-id {victim} with {} OSDs", layout.osds));
    }
    run(RunOpts {
        layout,
        objects,
        size,
        inflight,
        kill_restart,
        victim,
        dir: c.dir,
        timeout: Duration::from_secs(timeout),
        cores: c.cores,
        fsync: c.fsync,
    })
}

fn main_osd(mut a: Args, mut c: Common) -> Result<(), String> {
    let mut id = None;
    while let Some(f) = a.next_flag() {
        if c.flag(&mut a, &f)? {
            continue;
        }
        match f.as_str() {
            "--id" => id = Some(a.parse(&f)?),
            _ => return Err(a.unknown(&f)),
        }
    }
    let id = id.ok_or(format!("osd: --id is required\n{USAGE}"))?;
    let dir = c
        .dir
        .clone()
        .ok_or(format!("osd: --dir is required\n{USAGE}"))?;
    run_osd(OsdOpts {
        id,
        layout: c.layout()?,
        dir,
        cores: c.cores,
        fsync: c.fsync,
    })
}

fn main() -> ExitCode {
    let mut a = Args::from_env(USAGE);
    let c = Common {
        osds: 3,
        transport: TransportKind::Tcp,
        base_port: 6800,
        run_id: std::process::id(),
        grace_ms: 2000,
        dir: None,
        cores: 1,
        fsync: false,
    };
    let (what, r) = match a.next_flag().as_deref() {
        Some("run") => ("run", main_run(a, c)),
        Some("osd") => ("osd", main_osd(a, c)),
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => ("", Err(USAGE.to_string())),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if what == "run" => {
            println!("osd-cluster: FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("osd-cluster {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
