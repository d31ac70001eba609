//! The OSD child processes of `osd-cluster run`: started from this binary
//! (`osd-cluster osd ...`) with `PR_SET_PDEATHSIG` so they die with the orchestrator (they
//! also stop when their stdin closes), their stdout lines forwarded to a channel, killed,
//! restarted, stopped; and the watchdog that bounds the whole run.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::orchestrator::RunOpts;

/// A line from a child (None: its stdout closed).
pub struct Line {
    pub at: Instant,
    pub osd: usize,
    pub gen: u32,
    pub text: Option<String>,
}

pub struct Child {
    proc: std::process::Child,
    stdin: Option<ChildStdin>,
    gen: u32,
}

/// The OSD processes.
pub struct Cluster {
    o: Arc<RunOpts>,
    dir: PathBuf,
    children: Vec<Option<Child>>,
    /// Per OSD: the generation of its current process (1 for the first, +1 per restart).
    pub gens: Vec<u32>,
    tx: Sender<Line>,
    /// Child pids, for the watchdog.
    pids: Arc<Mutex<Vec<i32>>>,
}

impl Cluster {
    pub fn new(
        o: Arc<RunOpts>,
        dir: PathBuf,
        tx: Sender<Line>,
        pids: Arc<Mutex<Vec<i32>>>,
    ) -> Cluster {
        let n = o.layout.osds;
        Cluster {
            o,
            dir,
            children: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            tx,
            pids,
        }
    }

    /// Start OSD `id` (from the main thread: PR_SET_PDEATHSIG fires when the thread that
    /// forked the child exits).
    pub fn spawn(&mut self, id: usize) -> Result<u32, String> {
        let o = &self.o;
        let l = &o.layout;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("osd")
            .args(["--id", &id.to_string()])
            .args(["--osds", &l.osds.to_string()])
            .args(["--transport", &l.transport.to_string()])
            .args(["--base-port", &l.base_port.to_string()])
            .args(["--run-id", &l.run_id.to_string()])
            .args(["--grace-ms", &l.grace.as_millis().to_string()])
            .args(["--cores", &o.cores.to_string()])
            .arg("--dir")
            .arg(&self.dir);
        if o.fsync {
            cmd.arg("--fsync");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and _exit are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl: no signal will come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut proc = cmd.spawn().map_err(|e| format!("spawn osd.{id}: {e}"))?;
        let pid = proc.id();
        self.pids.lock().expect("poison").push(pid as i32);
        self.gens[id] += 1;
        let gen = self.gens[id];
        let out = proc.stdout.take().expect("piped");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(out).lines() {
                let Ok(text) = text else { break };
                let at = Instant::now();
                let _ = tx.send(Line {
                    at,
                    osd: id,
                    gen,
                    text: Some(text),
                });
            }
            let at = Instant::now();
            let _ = tx.send(Line {
                at,
                osd: id,
                gen,
                text: None,
            });
        });
        let stdin = proc.stdin.take();
        self.children[id] = Some(Child { proc, stdin, gen });
        Ok(pid)
    }

    /// SIGKILL OSD `id` and reap it.
    pub fn kill(&mut self, id: usize) -> Result<u32, String> {
        let mut c = self.children[id]
            .take()
            .ok_or(format!("osd.{id} is not running"))?;
        let pid = c.proc.id();
        c.proc.kill().map_err(|e| format!("kill osd.{id}: {e}"))?;
        let _ = c.proc.wait();
        self.pids
            .lock()
            .expect("poison")
            .retain(|&p| p != pid as i32);
        Ok(pid)
    }

    /// A child that exited on its own.
    pub fn exited(&mut self) -> Option<(usize, String)> {
        for (id, c) in self.children.iter_mut().enumerate() {
            if let Some(c) = c {
                if let Ok(Some(s)) = c.proc.try_wait() {
                    return Some((id, s.to_string()));
                }
            }
        }
        None
    }

    /// Close every child's stdin (they stop cleanly), wait up to `limit`, then SIGKILL.
    pub fn stop_all(&mut self, limit: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        for c in self.children.iter_mut().flatten() {
            c.stdin.take();
        }
        let end = Instant::now() + limit;
        for (id, slot) in self.children.iter_mut().enumerate() {
            let Some(mut c) = slot.take() else { continue };
            loop {
                match c.proc.try_wait() {
                    Ok(Some(s)) if s.success() => break,
                    Ok(Some(s)) => {
                        problems.push(format!("osd.{id} (gen {}) exited with {s}", c.gen));
                        break;
                    }
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        problems.push(format!("osd.{id} did not stop: killed"));
                        let _ = c.proc.kill();
                        let _ = c.proc.wait();
                        break;
                    }
                }
            }
        }
        self.pids.lock().expect("poison").clear();
        problems
    }
}

/// Stop the run after `limit` whatever happens: SIGKILL the children, exit 2.
pub fn watchdog(limit: Duration, pids: Arc<Mutex<Vec<i32>>>) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "osd-cluster: FAILED: still running after {} s: killing everything",
            limit.as_secs()
        );
        for &pid in pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: plain syscall on a pid we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
}
