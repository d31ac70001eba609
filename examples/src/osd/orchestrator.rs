//! `osd-cluster run`: start the OSD processes, wait until every pair exchanges heartbeats,
//! run the client, optionally SIGKILL a replica midway and restart it (checking the
//! heartbeat detection time), then stop everything and verify that every acknowledged
//! write is on all its OSDs, byte-exact.
//!
//! The children and the watchdog are in [`super::children`], the final check in
//! [`super::verify`].

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corewire_runtime::Runtime;

use super::children::{watchdog, Cluster, Line};
use super::client::Client;
use super::store::osd_dir;
use super::verify::verify;
use super::{Layout, REPLICAS};

/// `osd-cluster run` options.
pub struct RunOpts {
    pub layout: Layout,
    pub objects: u64,
    pub size: usize,
    pub inflight: usize,
    pub kill_restart: bool,
    pub victim: usize,
    pub dir: Option<PathBuf>,
    pub timeout: Duration,
    pub cores: usize,
    pub fsync: bool,
}

/// What the orchestrator understands of a child's line.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Ready(usize),
    Down {
        by: usize,
        who: usize,
        silent_ms: u64,
    },
    Up {
        by: usize,
        who: usize,
    },
}

fn osd_id(s: &str) -> Option<usize> {
    s.strip_prefix("osd.")?.parse().ok()
}

fn parse(text: &str) -> Option<Ev> {
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        ["READY", o, ..] => Some(Ev::Ready(osd_id(o)?)),
        ["EVENT", by, "reports", who, "up"] => Some(Ev::Up {
            by: osd_id(by)?,
            who: osd_id(who)?,
        }),
        ["EVENT", by, "reports", who, "down", "(no", "heartbeat", "for", ms, "ms)"] => {
            Some(Ev::Down {
                by: osd_id(by)?,
                who: osd_id(who)?,
                silent_ms: ms.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// What the children reported so far.
struct View {
    ready: Vec<bool>,
    /// `up[a][b]`: osd.a last reported osd.b up.
    up: Vec<Vec<bool>>,
    /// Down reports about the victim since the kill: (reporter, when received, silent ms).
    victim_down: Vec<(usize, Instant, u64)>,
    /// Down reports about any other OSD (not expected).
    unexpected_down: Vec<String>,
    gens: Vec<u32>,
    /// Children whose stdout is still open (current generation).
    open: usize,
}

struct Run {
    o: Arc<RunOpts>,
    cluster: Cluster,
    rx: Receiver<Line>,
    view: View,
    victim: Option<usize>,
    failures: Vec<String>,
}

impl Run {
    /// Print and digest the children's lines for up to `wait`.
    fn pump(&mut self, wait: Duration) {
        let first = match self.rx.recv_timeout(wait) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut next = Some(first);
        while let Some(l) = next {
            self.digest(l);
            next = self.rx.try_recv().ok();
        }
    }

    fn digest(&mut self, l: Line) {
        let current = self.view.gens[l.osd] == l.gen;
        let Some(text) = l.text else {
            if current {
                self.view.open -= 1;
            }
            return;
        };
        println!("  [osd.{}] {text}", l.osd);
        if !current {
            return;
        }
        let v = &mut self.view;
        match parse(&text) {
            Some(Ev::Ready(id)) if id == l.osd => v.ready[id] = true,
            Some(Ev::Up { by, who }) if by == l.osd && who < v.up.len() => v.up[by][who] = true,
            Some(Ev::Down { by, who, silent_ms }) if by == l.osd && who < v.up.len() => {
                v.up[by][who] = false;
                if Some(who) == self.victim {
                    v.victim_down.push((by, l.at, silent_ms));
                } else {
                    v.unexpected_down.push(text);
                }
            }
            _ => {}
        }
    }

    fn all_up(&self) -> bool {
        let v = &self.view;
        v.ready.iter().all(|&r| r)
            && (0..v.up.len()).all(|a| (0..v.up.len()).all(|b| a == b || v.up[a][b]))
    }

    /// Pump until `cond` holds; false after `limit`.
    fn wait_for(&mut self, limit: Duration, cond: impl Fn(&Run) -> bool) -> bool {
        let end = Instant::now() + limit;
        while !cond(self) {
            if let Some((id, status)) = self.cluster.exited() {
                self.failures
                    .push(format!("osd.{id} exited unexpectedly: {status}"));
                return false;
            }
            if Instant::now() > end {
                return false;
            }
            self.pump(Duration::from_millis(20));
        }
        true
    }

    /// Kill the victim, time the heartbeat detection, restart it, wait until it is back.
    fn kill_and_restart(&mut self, client: &Client) {
        let Some(victim) = self.victim else { return };
        let l = self.o.layout.clone();
        let bound = l.grace + l.ping_interval();
        let acked = client.state().acked.len();
        let pid = match self.cluster.kill(victim) {
            Ok(p) => p,
            Err(e) => return self.failures.push(e),
        };
        let killed = Instant::now();
        self.view.ready[victim] = false;
        self.view.victim_down.clear();
        println!("KILL osd.{victim} (pid {pid}, SIGKILL) after {acked} acked writes");
        let others = l.osds - 1;
        let ok = self.wait_for(bound + Duration::from_secs(3), |r| {
            r.view.victim_down.len() >= others
        });
        for &(by, at, silent) in &self.view.victim_down {
            let ms = (at - killed).as_millis();
            let verdict = if at - killed <= bound {
                "OK"
            } else {
                "TOO LATE"
            };
            println!(
                "heartbeat: osd.{by} detected osd.{victim} down {ms} ms after SIGKILL \
                 (no heartbeat for {silent} ms; bound: grace {} + ping interval {} = {} ms): {verdict}",
                l.grace.as_millis(),
                l.ping_interval().as_millis(),
                bound.as_millis()
            );
            if at - killed > bound {
                self.failures.push(format!(
                    "osd.{by} detected osd.{victim} down after {ms} ms, over {} ms",
                    bound.as_millis()
                ));
            }
        }
        if !ok {
            self.failures.push(format!(
                "only {} of {others} OSDs reported osd.{victim} down",
                self.view.victim_down.len()
            ));
        }
        // Restart it with the same id, addresses, nonces and directory.
        for row in self.view.up.iter_mut() {
            row[victim] = false;
        }
        self.view.up[victim].iter_mut().for_each(|u| *u = false);
        let restarted = Instant::now();
        match self.cluster.spawn(victim) {
            Ok(pid) => {
                self.view.gens[victim] = self.cluster.gens[victim];
                self.view.open += 1;
                println!(
                    "RESTART osd.{victim} (pid {pid}), {} ms after the kill",
                    (restarted - killed).as_millis()
                );
            }
            Err(e) => return self.failures.push(e),
        }
        if self.wait_for(Duration::from_secs(30), |r| r.all_up()) {
            println!(
                "osd.{victim} is back: every pair exchanges heartbeats again {} ms after the \
                 restart ({} writes acked meanwhile)",
                restarted.elapsed().as_millis(),
                client.state().acked.len() - acked
            );
        } else {
            self.failures.push(format!(
                "osd.{victim} not reported up 30 s after its restart"
            ));
        }
    }
}

/// `osd-cluster run`. Err: the run failed (the caller exits non-zero).
pub fn run(o: RunOpts) -> Result<(), String> {
    let o = Arc::new(o);
    let l = o.layout.clone();
    let dir = o.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("osd-cluster-{}", std::process::id()))
    });
    for id in 0..l.osds {
        let d = osd_dir(&dir, id);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| format!("clearing {}: {e}", d.display()))?;
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "osd-cluster: {} OSDs over {} (grace {} ms, pings every {} ms), {} objects of {} B, \
         {} in flight, objects in {}",
        l.osds,
        l.transport,
        l.grace.as_millis(),
        l.ping_interval().as_millis(),
        o.objects,
        o.size,
        o.inflight,
        dir.display()
    );
    let pids = Arc::new(Mutex::new(Vec::new()));
    watchdog(o.timeout, pids.clone());
    let (tx, rx) = channel();
    let mut run = Run {
        o: o.clone(),
        cluster: Cluster::new(o.clone(), dir.clone(), tx, pids),
        rx,
        view: View {
            ready: vec![false; l.osds],
            up: vec![vec![false; l.osds]; l.osds],
            victim_down: Vec::new(),
            unexpected_down: Vec::new(),
            gens: vec![1; l.osds],
            open: l.osds,
        },
        victim: o.kill_restart.then_some(o.victim),
        failures: Vec::new(),
    };
    for id in 0..l.osds {
        run.cluster.spawn(id)?;
    }
    let t = Instant::now();
    if !run.wait_for(Duration::from_secs(30), |r| r.all_up()) {
        run.cluster.stop_all(Duration::from_secs(2));
        if run.failures.is_empty() {
            run.failures
                .push("the OSDs did not all see each other within 30 s".into());
        }
        return Err(format!("cluster start: {}", run.failures.join("; ")));
    }
    println!(
        "cluster up: every OSD sees every other ({} ms)",
        t.elapsed().as_millis()
    );

    let rt = Runtime::builder()
        .cores(1)
        .pin(false)
        .thread_name("client")
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let client = Client::new(l.clone(), o.objects, o.size, o.inflight);
    client.start(&rt)?;
    let stall = Duration::from_secs(20).max(l.grace * 4);
    let mut killed_at: Option<(usize, Duration)> = None;
    loop {
        run.pump(Duration::from_millis(20));
        if let Some((id, status)) = run.cluster.exited() {
            run.failures
                .push(format!("osd.{id} exited unexpectedly: {status}"));
            break;
        }
        let (acked, done, last_ack, elapsed) = {
            let st = client.state();
            (st.acked.len(), st.done, st.last_ack, st.started.elapsed())
        };
        if done {
            break;
        }
        if last_ack.elapsed() > stall {
            let st = client.state();
            run.failures.push(format!(
                "no write acked for {} s ({acked} acked; in flight per primary osd: {:?})",
                stall.as_secs(),
                st.pending_by_primary(l.osds)
            ));
            break;
        }
        if o.kill_restart && killed_at.is_none() && acked as u64 >= o.objects / 2 {
            killed_at = Some((acked, elapsed));
            run.kill_and_restart(&client);
        }
    }
    client.wait_done(Duration::ZERO);
    client.stop(&rt);
    let _ = rt.shutdown();

    // Results.
    let (acked, hist, error, resends, secs) = {
        let st = client.state();
        let end = st.finished.unwrap_or_else(Instant::now);
        let secs = (end - st.started).as_secs_f64().max(1e-9);
        (
            st.acked.clone(),
            st.hist.clone(),
            st.error.clone(),
            st.resends,
            secs,
        )
    };
    let n = acked.len() as f64;
    println!(
        "client: {} of {} writes of {} B acked in {secs:.3} s: {:.0} writes/s, {:.2} MB/s \
         ({} in flight, {} OSDs over {}, {REPLICAS} replicas)",
        acked.len(),
        o.objects,
        o.size,
        n / secs,
        n * o.size as f64 / secs / 1e6,
        o.inflight,
        l.osds,
        l.transport
    );
    if let Some((k, at)) = killed_at {
        let s = at.as_secs_f64().max(1e-9);
        println!(
            "client: before the kill: {k} writes in {s:.3} s: {:.0} writes/s, {:.2} MB/s",
            k as f64 / s,
            k as f64 * o.size as f64 / s / 1e6
        );
    }
    let q = |p: f64| hist.value_at_quantile(p);
    println!(
        "client: write latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}{}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        hist.max(),
        if killed_at.is_some() {
            " (writes in flight during the outage wait for the restarted replica)"
        } else {
            ""
        }
    );
    println!("client: {resends} writes sent again after a client session failed");
    if let Some(e) = error {
        run.failures.push(format!("client: {e}"));
    }
    if (acked.len() as u64) < o.objects && run.failures.is_empty() {
        run.failures.push(format!(
            "only {} of {} writes acked",
            acked.len(),
            o.objects
        ));
    }

    // Stop the OSDs (they print their counters), then verify their files.
    let problems = run.cluster.stop_all(Duration::from_secs(10));
    run.failures.extend(problems);
    let drained = Instant::now() + Duration::from_secs(5);
    while run.view.open > 0 && Instant::now() < drained {
        run.pump(Duration::from_millis(50));
    }
    if !run.view.unexpected_down.is_empty() {
        println!(
            "warning: {} unexpected down report(s) (an OSD that was not killed): {:?}",
            run.view.unexpected_down.len(),
            run.view.unexpected_down
        );
    }
    let bad = verify(&dir, l.osds, o.size, &acked);
    if bad.is_empty() {
        println!(
            "verified {} acked objects on {REPLICAS} replicas each: OK",
            acked.len()
        );
    } else {
        println!(
            "verification FAILED: {} problem(s) over {} acked objects:",
            bad.len(),
            acked.len()
        );
        for b in bad.iter().take(20) {
            println!("  {b}");
        }
        run.failures.push(format!("{} objects wrong", bad.len()));
    }
    if run.failures.is_empty() {
        Ok(())
    } else {
        Err(run.failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        assert_eq!(parse("READY osd.2 pid 77"), Some(Ev::Ready(2)));
        assert_eq!(
            parse("EVENT osd.0 reports osd.2 down (no heartbeat for 2013 ms)"),
            Some(Ev::Down {
                by: 0,
                who: 2,
                silent_ms: 2013
            })
        );
        assert_eq!(
            parse("EVENT osd.1 reports osd.0 up"),
            Some(Ev::Up { by: 1, who: 0 })
        );
        assert_eq!(parse("osd.0: 3 objects"), None);
    }
}
