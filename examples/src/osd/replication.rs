//! Replication, in each OSD's op worker thread (Ceph's op queue and `ReplicatedBackend`):
//! the worker owns the store and the replication state, so file I/O never blocks a
//! messenger core; the dispatchers only decode and hand it [`Event`]s.
//!
//! The primary sends MOSDRepOp to both replicas, writes locally, and acks the client only
//! once both replicas acked. There is no degraded mode: while a replica is down its writes
//! wait, and the lossless cluster session delivers them once it is back. A restarted
//! replica has lost its session: the primary's messenger reports `ms_handle_remote_reset`
//! and drops what it had queued for it (Ceph's behaviour), so the primary keeps every
//! unacked repop per replica, keyed by tid, and sends them all again then. Replicas apply
//! idempotently by (object, version).

use std::collections::{BTreeMap, HashMap};

use corewire_messenger::{ConnectionRef, Message, Messenger};
use crossbeam_channel::Receiver;

use super::msgs::{Boot, OsdOp, OsdOpReply, RepOp, RepOpReply, EIO, EXDEV};
use super::store::{Applied, Store};
use super::{acting, Kind, Layout};

/// What the dispatchers hand to the worker.
pub enum Event {
    ClientOp(ConnectionRef, OsdOp),
    RepOp(ConnectionRef, RepOp),
    RepOpReply(RepOpReply),
    /// The cluster session with this OSD was reset by the peer (it restarted).
    RemoteReset(usize),
    Boot(Boot),
    Stop,
}

/// A client write waiting for its replicas.
struct InFlight {
    client: ConnectionRef,
    client_tid: u64,
    object: String,
    version: u64,
    waiting: Vec<usize>,
    result: i32,
}

#[derive(Default)]
pub struct Stats {
    pub client_ops: u64,
    pub repops_applied: u64,
    pub repops_resent: u64,
    pub remote_resets: u64,
    pub duplicate_replies: u64,
}

/// The op worker: owns the store and the replication state.
pub struct Worker {
    me: usize,
    layout: Layout,
    store: Store,
    cluster: Messenger,
    next_tid: u64,
    inflight: HashMap<u64, InFlight>,
    /// Per replica: repops sent and not yet acked, by tid (sent again after a remote reset).
    pending: Vec<BTreeMap<u64, Message>>,
    stats: Stats,
}

impl Worker {
    pub fn new(me: usize, layout: Layout, store: Store, cluster: Messenger) -> Worker {
        let pending = vec![BTreeMap::new(); layout.osds];
        Worker {
            me,
            layout,
            store,
            cluster,
            next_tid: 0,
            inflight: HashMap::new(),
            pending,
            stats: Stats::default(),
        }
    }

    /// Handle events until [`Event::Stop`].
    pub fn run(mut self, rx: Receiver<Event>) -> Stats {
        while let Ok(ev) = rx.recv() {
            match ev {
                Event::ClientOp(conn, op) => self.client_op(conn, op),
                Event::RepOp(conn, op) => self.rep_op(conn, op),
                Event::RepOpReply(r) => self.rep_reply(r),
                Event::RemoteReset(osd) => self.resend(osd),
                Event::Boot(b) => println!(
                    "osd.{}: osd.{} booted (pid {}); {} repops pending for it",
                    self.me,
                    b.from,
                    b.pid,
                    self.pending.get(b.from as usize).map_or(0, |p| p.len())
                ),
                Event::Stop => break,
            }
        }
        self.stats
    }

    fn client_op(&mut self, client: ConnectionRef, op: OsdOp) {
        self.stats.client_ops += 1;
        let set = acting(&op.object, self.layout.osds);
        let reply = |result| OsdOpReply {
            tid: op.tid,
            object: op.object.clone(),
            version: op.version,
            result,
            osd: self.me as u32,
        };
        if set[0] != self.me {
            let _ = client.send(Message::encode(&reply(EXDEV)));
            return;
        }
        self.next_tid += 1;
        let tid = self.next_tid;
        for &r in &set[1..] {
            let m = Message::encode(&RepOp {
                tid,
                from: self.me as u32,
                object: op.object.clone(),
                version: op.version,
                data: op.data.clone(),
            });
            self.pending[r].insert(tid, m.clone());
            let _ = self
                .cluster
                .send_message(m, &self.layout.peer(r, Kind::Cluster));
        }
        let result = match self.store.apply(&op.object, op.version, &op.data) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("osd.{}: writing {}: {e}", self.me, op.object);
                EIO
            }
        };
        self.inflight.insert(
            tid,
            InFlight {
                client,
                client_tid: op.tid,
                object: op.object,
                version: op.version,
                waiting: set[1..].to_vec(),
                result,
            },
        );
    }

    fn rep_op(&mut self, conn: ConnectionRef, op: RepOp) {
        let result = match self.store.apply(&op.object, op.version, &op.data) {
            Ok(Applied::Written) => {
                self.stats.repops_applied += 1;
                0
            }
            Ok(Applied::AlreadyHad) => 0,
            Err(e) => {
                eprintln!("osd.{}: writing {}: {e}", self.me, op.object);
                EIO
            }
        };
        let r = RepOpReply {
            tid: op.tid,
            from: self.me as u32,
            object: op.object,
            version: op.version,
            result,
        };
        let _ = conn.send(Message::encode(&r));
    }

    fn rep_reply(&mut self, r: RepOpReply) {
        let from = r.from as usize;
        if self
            .pending
            .get_mut(from)
            .and_then(|p| p.remove(&r.tid))
            .is_none()
        {
            // A reply to a repop sent twice (after a remote reset).
            self.stats.duplicate_replies += 1;
            return;
        }
        let Some(op) = self.inflight.get_mut(&r.tid) else {
            return;
        };
        op.waiting.retain(|&o| o != from);
        if r.result != 0 {
            op.result = r.result;
        }
        if op.waiting.is_empty() {
            let op = self.inflight.remove(&r.tid).expect("just seen");
            let reply = OsdOpReply {
                tid: op.client_tid,
                object: op.object,
                version: op.version,
                result: op.result,
                osd: self.me as u32,
            };
            // Dropped if the client's session is gone: the client sends the op again.
            let _ = op.client.send(Message::encode(&reply));
        }
    }

    /// The cluster session with `osd` was reset: its queue was dropped; send again every
    /// repop it has not acked, in tid order.
    fn resend(&mut self, osd: usize) {
        self.stats.remote_resets += 1;
        let Some(p) = self.pending.get(osd) else {
            return;
        };
        let peer = self.layout.peer(osd, Kind::Cluster);
        for m in p.values() {
            let _ = self.cluster.send_message(m.clone(), &peer);
        }
        self.stats.repops_resent += p.len() as u64;
        println!(
            "osd.{}: cluster session with osd.{osd} reset by the peer (restarted): \
             resent {} unacked repops",
            self.me,
            p.len()
        );
    }
}
