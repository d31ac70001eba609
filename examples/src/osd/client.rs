//! The client: writes `objects` objects of `size` bytes, `inflight` at a time, each to its
//! primary (MOSDOp), and records each write's latency (first send to ack) in an hdr
//! histogram.
//!
//! Client sessions are lossy (Ceph's client → OSD policy): when one fails (the OSD was
//! killed) or cannot be opened (it is not back yet), the writes in flight to that OSD are
//! sent again every [`RESEND_EVERY`] until it answers, like Ceph's Objecter resending on a
//! new map. Writes are idempotent by (object, version), so a duplicate is harmless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger, MessengerError};
use corewire_runtime::Runtime;
use hdrhistogram::Histogram;

use super::msgs::{OsdOp, OsdOpReply, MSG_OSD_OPREPLY};
use super::{acting, object_data, object_name, of_nonce, Kind, Layout};

/// How often writes to an OSD whose session failed are sent again.
pub const RESEND_EVERY: Duration = Duration::from_millis(100);
/// Every object is written once, as version 1 (the store and the replicas would take newer
/// versions as overwrites).
pub const VERSION: u64 = 1;

struct Pending {
    idx: u64,
    primary: usize,
    first_sent: Instant,
}

/// The client's progress.
pub struct State {
    next: u64,
    pending: HashMap<u64, Pending>,
    /// Objects acknowledged, with the version acknowledged.
    pub acked: Vec<(u64, u64)>,
    /// Write latency, µs.
    pub hist: Histogram<u64>,
    pub error: Option<String>,
    pub done: bool,
    pub resends: u64,
    pub started: Instant,
    pub last_ack: Instant,
    pub finished: Option<Instant>,
}

impl State {
    /// Writes in flight per primary OSD (for a diagnosis when the run stalls).
    pub fn pending_by_primary(&self, osds: usize) -> Vec<usize> {
        let mut v = vec![0; osds];
        for p in self.pending.values() {
            v[p.primary] += 1;
        }
        v
    }
}

pub struct Client {
    layout: Layout,
    objects: u64,
    size: usize,
    inflight: usize,
    msgr: OnceLock<Messenger>,
    st: Mutex<State>,
    cv: Condvar,
    /// Per OSD: its session failed since the last resend.
    failed: Vec<AtomicBool>,
}

impl Client {
    pub fn new(layout: Layout, objects: u64, size: usize, inflight: usize) -> Arc<Client> {
        let now = Instant::now();
        let failed = (0..layout.osds).map(|_| AtomicBool::new(false)).collect();
        Arc::new(Client {
            layout,
            objects,
            size,
            inflight: inflight.max(1),
            msgr: OnceLock::new(),
            st: Mutex::new(State {
                next: 0,
                pending: HashMap::new(),
                acked: Vec::with_capacity(objects as usize),
                hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
                error: None,
                done: objects == 0,
                resends: 0,
                started: now,
                last_ack: now,
                finished: None,
            }),
            cv: Condvar::new(),
            failed,
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().expect("poison")
    }

    /// Start the messenger on `rt` and the first `inflight` writes; a thread resends writes
    /// to OSDs whose session failed, until the end.
    pub fn start(self: &Arc<Self>, rt: &Runtime) -> Result<(), String> {
        let err = |e: MessengerError| e.to_string();
        let msgr = Messenger::builder(EntityName::new(EntityType::Client, 1))
            .transport(self.layout.transport)
            .handle(rt.handle())
            .build()
            .map_err(err)?;
        msgr.add_dispatcher_tail(self.clone()).map_err(err)?;
        msgr.start().map_err(err)?;
        let _ = self.msgr.set(msgr);
        {
            let mut st = self.state();
            st.started = Instant::now();
            st.last_ack = st.started;
            self.issue(&mut st);
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("client-resend".into())
            .spawn(move || me.resend_loop())
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn send(&self, tid: u64, p: &Pending) {
        let op = OsdOp {
            tid,
            object: object_name(p.idx),
            version: VERSION,
            data: object_data(p.idx, VERSION, self.size).into(),
        };
        if let Some(m) = self.msgr.get() {
            // A failure shows as a reset or refusal of the session: resent then.
            let _ = m.send_message(
                Message::encode(&op),
                &self.layout.peer(p.primary, Kind::Public),
            );
        }
    }

    /// Start writes until `inflight` are outstanding.
    fn issue(&self, st: &mut State) {
        while !st.done && st.pending.len() < self.inflight && st.next < self.objects {
            let idx = st.next;
            st.next += 1;
            let p = Pending {
                idx,
                primary: acting(&object_name(idx), self.layout.osds)[0],
                first_sent: Instant::now(),
            };
            self.send(idx + 1, &p);
            st.pending.insert(idx + 1, p);
        }
    }

    fn fail(&self, st: &mut State, e: String) {
        if st.error.is_none() {
            st.error = Some(e);
        }
        st.done = true;
        st.finished = Some(Instant::now());
        self.cv.notify_all();
    }

    fn on_reply(&self, r: OsdOpReply) {
        let now = Instant::now();
        let mut st = self.state();
        if st.done {
            return;
        }
        if r.result != 0 {
            let e = format!(
                "write of {} v{} failed on osd.{}: error {}",
                r.object, r.version, r.osd, r.result
            );
            return self.fail(&mut st, e);
        }
        // A second reply to a write sent twice: already counted.
        let Some(p) = st.pending.remove(&r.tid) else {
            return;
        };
        if r.object != object_name(p.idx) || r.version != VERSION {
            let e = format!(
                "reply for tid {} names {} v{}, sent {} v{VERSION}",
                r.tid,
                r.object,
                r.version,
                object_name(p.idx)
            );
            return self.fail(&mut st, e);
        }
        let us = (now - p.first_sent).as_micros().max(1) as u64;
        let _ = st.hist.record(us.min(3_600_000_000));
        st.acked.push((p.idx, r.version));
        st.last_ack = now;
        if st.acked.len() as u64 == self.objects {
            st.done = true;
            st.finished = Some(now);
            self.cv.notify_all();
        } else {
            self.issue(&mut st);
        }
    }

    fn resend_loop(&self) {
        loop {
            std::thread::sleep(RESEND_EVERY);
            let mut st = self.state();
            if st.done {
                return;
            }
            for (osd, f) in self.failed.iter().enumerate() {
                if !f.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let mut n = 0;
                for (&tid, p) in st.pending.iter().filter(|(_, p)| p.primary == osd) {
                    self.send(tid, p);
                    n += 1;
                }
                st.resends += n;
            }
        }
    }

    fn session_failed(&self, conn: &ConnectionRef) {
        if let Some((osd, Kind::Public)) = of_nonce(conn.peer().nonce) {
            if let Some(f) = self.failed.get(osd) {
                f.store(true, Ordering::Release);
            }
        }
    }

    /// Wait until every write is acked, one failed, or `limit` passed.
    pub fn wait_done(&self, limit: Duration) -> bool {
        let st = self.state();
        let (st, _) = self
            .cv
            .wait_timeout_while(st, limit, |s| !s.done)
            .expect("poison");
        st.done
    }

    /// Stop the messenger.
    pub fn stop(&self, rt: &Runtime) {
        if let Some(m) = self.msgr.get() {
            let _ = rt.block_on(m.shutdown());
        }
    }
}

impl Dispatcher for Client {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == MSG_OSD_OPREPLY
    }
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        match msg.decode::<OsdOpReply>() {
            Ok(r) => self.on_reply(r),
            Err(e) => {
                let mut st = self.state();
                self.fail(&mut st, format!("undecodable reply: {e}"));
            }
        }
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, _reason: &MessengerError) -> bool {
        self.session_failed(conn);
        true
    }
    fn ms_handle_refused(&self, conn: &ConnectionRef) -> bool {
        self.session_failed(conn);
        true
    }
}
