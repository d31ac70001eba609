//! One OSD process (`osd-cluster osd --id I ...`).
//!
//! Messengers, all on one small runtime: `public` (clients; stateless server policy),
//! `cluster` (replication; lossless peer policy towards OSDs, Ceph's default), and the
//! heartbeat pair (`hb` server, bound, and an unbound `hbclient` that sends the pings, as
//! Ceph's `hb_*_server` / `hb_*_client`). Every messenger has a fixed nonce per OSD id and
//! kind, so a restarted OSD has the same identity (address + nonce) as before.
//!
//! The public and cluster dispatchers decode and hand everything to the op worker
//! ([`super::replication`]); a remote reset of a cluster session (the peer restarted) goes
//! there too, so the worker sends its unacked repops again.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corewire_examples::{catch_ctrl_c, stop_requested};
use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger, MessengerError, Policy};
use corewire_runtime::Runtime;
use crossbeam_channel::Sender;

use super::heartbeat::{HbClient, HbServer, Heartbeat};
use super::msgs::{Boot, MSG_OSD_BOOT, MSG_OSD_OP, MSG_OSD_REPOP, MSG_OSD_REPOPREPLY};
use super::replication::{Event, Worker};
use super::store::{osd_dir, Store};
use super::{of_nonce, Kind, Layout};

/// `osd-cluster osd` options.
pub struct OsdOpts {
    pub id: usize,
    pub layout: Layout,
    pub dir: PathBuf,
    pub cores: usize,
    pub fsync: bool,
}

/// Decodes and forwards to the worker; reports remote resets of the cluster sessions.
struct ToWorker {
    me: usize,
    tx: Sender<Event>,
}

impl ToWorker {
    fn decode<T: corewire_messenger::MessagePayload>(&self, msg: &Message) -> Option<T> {
        msg.decode::<T>()
            .map_err(|e| eprintln!("osd.{}: undecodable message: {e}", self.me))
            .ok()
    }
}

impl Dispatcher for ToWorker {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        matches!(
            msg.msg_type,
            MSG_OSD_OP | MSG_OSD_REPOP | MSG_OSD_REPOPREPLY | MSG_OSD_BOOT
        )
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let ev = match msg.msg_type {
            MSG_OSD_OP => self
                .decode(&msg)
                .map(|op| Event::ClientOp(conn.clone(), op)),
            MSG_OSD_REPOP => self.decode(&msg).map(|op| Event::RepOp(conn.clone(), op)),
            MSG_OSD_REPOPREPLY => self.decode(&msg).map(Event::RepOpReply),
            MSG_OSD_BOOT => self.decode(&msg).map(Event::Boot),
            _ => None,
        };
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
        }
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) -> bool {
        match of_nonce(conn.peer().nonce) {
            Some((osd, Kind::Cluster)) => {
                let _ = self.tx.send(Event::RemoteReset(osd));
            }
            _ => eprintln!(
                "osd.{}: remote reset from unknown peer {}",
                self.me,
                conn.peer()
            ),
        }
        true
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, reason: &MessengerError) -> bool {
        // Lossy client sessions end this way (a client went away); a lossless cluster
        // session never should.
        if matches!(of_nonce(conn.peer().nonce), Some((_, Kind::Cluster))) {
            println!(
                "osd.{}: cluster session to {} reset: {reason}",
                self.me,
                conn.peer()
            );
        }
        true
    }
}

static STDIN_CLOSED: AtomicBool = AtomicBool::new(false);

/// Run one OSD until stdin closes (the orchestrator went away or asks it to stop) or
/// SIGTERM / SIGINT.
pub fn run_osd(o: OsdOpts) -> Result<(), String> {
    let me = o.id;
    let layout = o.layout.clone();
    if me >= layout.osds {
        return Err(format!("--id {me} with --osds {}", layout.osds));
    }
    catch_ctrl_c();
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        STDIN_CLOSED.store(true, Ordering::SeqCst);
    });
    let dir = osd_dir(&o.dir, me);
    let store = Store::open(&dir, o.fsync).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("osd.{me}: {} objects in {}", store.objects(), dir.display());

    // Processes outnumber CPUs here: do not pin, let the kernel spread them.
    let rt = Runtime::builder()
        .cores(o.cores)
        .pin(false)
        .thread_name(format!("osd{me}"))
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let hb = Heartbeat::new(me, layout.clone());
    let name = EntityName::new(EntityType::Osd, me as i64);
    let build = |kind: Kind, d: Arc<dyn Dispatcher>| -> Result<Messenger, String> {
        let mut b = Messenger::builder(name)
            .transport(layout.transport)
            .handle(rt.handle())
            .nonce(super::nonce(me, kind));
        b = match kind {
            Kind::Cluster => {
                b.reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
            }
            Kind::Hb => b.policy(EntityType::Osd, Policy::stateless_server(0)),
            Kind::HbClient => b.policy(EntityType::Osd, Policy::lossy_client(0)),
            Kind::Public => b,
        };
        let m = b.build().map_err(|e| e.to_string())?;
        if kind != Kind::HbClient {
            let a = layout.addr(me, kind);
            rt.block_on(m.bind(&a))
                .map_err(|e| format!("bind {a}: {e}"))?;
        }
        m.add_dispatcher_tail(d).map_err(|e| e.to_string())?;
        m.start().map_err(|e| e.to_string())?;
        Ok(m)
    };
    let to_worker = Arc::new(ToWorker { me, tx: tx.clone() });
    let public = build(Kind::Public, to_worker.clone())?;
    let cluster = build(Kind::Cluster, to_worker)?;
    let hb_server = build(Kind::Hb, Arc::new(HbServer { me }))?;
    let hb_client = build(Kind::HbClient, Arc::new(HbClient { hb: hb.clone() }))?;

    let worker = Worker::new(me, layout.clone(), store, cluster.clone());
    let worker = std::thread::Builder::new()
        .name(format!("osd{me}-op"))
        .spawn(move || worker.run(rx))
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let hb_thread = {
        let (hb, c, stop) = (hb.clone(), hb_client.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("osd{me}-hb"))
            .spawn(move || hb.run(&c, &stop))
            .map_err(|e| e.to_string())?
    };
    // Tell every peer we (re)started: a peer holding a session with our previous instance
    // learns now that it is gone (remote reset) and sends again what it had for us.
    for j in (0..layout.osds).filter(|&j| j != me) {
        let boot = Boot {
            from: me as u32,
            pid: std::process::id(),
        };
        let _ = cluster.send_message(Message::encode(&boot), &layout.peer(j, Kind::Cluster));
    }
    println!("READY osd.{me} pid {}", std::process::id());

    while !stop_requested() && !STDIN_CLOSED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = hb_thread.join();
    let _ = tx.send(Event::Stop);
    let stats = worker.join().map_err(|_| "the op worker panicked")?;
    for m in [&public, &cluster, &hb_server, &hb_client] {
        let _ = rt.block_on(m.shutdown());
    }
    let c = cluster.counters();
    println!(
        "osd.{me}: stopping: {} client ops as primary, {} repops applied, {} repops resent \
         after {} remote resets, {} duplicate repop replies; cluster messenger: {} sessions \
         opened, {} resumed, {} faults, {} remote resets",
        stats.client_ops,
        stats.repops_applied,
        stats.repops_resent,
        stats.remote_resets,
        stats.duplicate_replies,
        c.sessions_opened,
        c.sessions_resumed,
        c.session_faults,
        c.remote_resets
    );
    rt.shutdown().map_err(|e| e.to_string())
}
