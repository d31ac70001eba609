//! Heartbeats between OSDs (Ceph's `OSD::heartbeat`): each OSD pings every other OSD every
//! grace / 4 from its heartbeat client messenger to the peer's heartbeat server messenger
//! (lossy sessions both ways, as Ceph's `hb_*_client` / `hb_*_server`); a peer whose last
//! reply is older than the grace period is reported down, and up again at its next reply.
//!
//! Reports are stdout lines the orchestrator parses:
//! `EVENT osd.0 reports osd.2 down (no heartbeat for 2013 ms)`, `EVENT osd.0 reports osd.2 up`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger};

use super::msgs::{Ping, MSG_OSD_PING};
use super::{Kind, Layout};

/// How often the tracker looks for silent peers (detection lags the grace by at most this).
const CHECK_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// No reply yet.
    Unknown,
    Up,
    Down,
}

struct Peer {
    state: PeerState,
    last_rx: Instant,
}

/// One OSD's view of its peers' liveness.
pub struct Heartbeat {
    me: usize,
    layout: Layout,
    start: Instant,
    seq: AtomicU64,
    peers: Mutex<Vec<Peer>>,
    pub replies: AtomicU64,
}

impl Heartbeat {
    pub fn new(me: usize, layout: Layout) -> Arc<Heartbeat> {
        let now = Instant::now();
        let peers = (0..layout.osds)
            .map(|_| Peer {
                state: PeerState::Unknown,
                last_rx: now,
            })
            .collect();
        Arc::new(Heartbeat {
            me,
            layout,
            start: now,
            seq: AtomicU64::new(0),
            peers: Mutex::new(peers),
            replies: AtomicU64::new(0),
        })
    }

    /// A ping reply from `from`.
    fn on_reply(&self, from: usize) {
        self.replies.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.peers.lock().expect("poison");
        let Some(p) = peers.get_mut(from).filter(|_| from != self.me) else {
            return;
        };
        p.last_rx = Instant::now();
        if p.state != PeerState::Up {
            p.state = PeerState::Up;
            println!("EVENT osd.{} reports osd.{from} up", self.me);
        }
    }

    /// Report peers silent for longer than the grace period (each once, until it is back).
    fn check(&self) {
        let now = Instant::now();
        let mut peers = self.peers.lock().expect("poison");
        for (j, p) in peers.iter_mut().enumerate() {
            let silent = now - p.last_rx;
            if p.state == PeerState::Up && silent > self.layout.grace {
                p.state = PeerState::Down;
                println!(
                    "EVENT osd.{} reports osd.{j} down (no heartbeat for {} ms)",
                    self.me,
                    silent.as_millis()
                );
            }
        }
    }

    fn ping_all(&self, client: &Messenger) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let stamp_ns = self.start.elapsed().as_nanos() as u64;
        for j in (0..self.layout.osds).filter(|&j| j != self.me) {
            let ping = Ping {
                reply: false,
                from: self.me as u32,
                seq,
                stamp_ns,
            };
            // A dead peer's connection fails (lossy): the ping is dropped, which is the point.
            let _ = client.send_message(Message::encode(&ping), &self.layout.peer(j, Kind::Hb));
        }
    }

    /// Ping and check until `stop` (on a thread of its own).
    pub fn run(&self, client: &Messenger, stop: &AtomicBool) {
        let interval = self.layout.ping_interval();
        let mut next_ping = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_ping {
                self.ping_all(client);
                next_ping += interval;
                if next_ping < now {
                    next_ping = now + interval;
                }
            }
            self.check();
            std::thread::sleep(CHECK_EVERY);
        }
    }
}

/// The heartbeat server's dispatcher: answers every ping on its connection.
pub struct HbServer {
    pub me: usize,
}

impl Dispatcher for HbServer {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == MSG_OSD_PING
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let Ok(p) = msg.decode::<Ping>() else { return };
        if !p.reply {
            let r = Ping {
                reply: true,
                from: self.me as u32,
                ..p
            };
            let _ = conn.send(Message::encode(&r));
        }
    }
}

/// The heartbeat client's dispatcher: records replies.
pub struct HbClient {
    pub hb: Arc<Heartbeat>,
}

impl Dispatcher for HbClient {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == MSG_OSD_PING
    }
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        if let Ok(p) = msg.decode::<Ping>() {
            if p.reply {
                self.hb.on_reply(p.from as usize);
            }
        }
    }
}
