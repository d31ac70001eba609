//! [`MonSession`]: a minimal blocking monitor client on top of [`Messenger`], for tests and
//! tools run from a plain thread: connect as `client.<id>` (auth none, crc mode), then ask for
//! map versions and the monmap. Not Ceph's `MonClient` (no hunting, no cephx, no renewals).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use corewire_runtime::Runtime;
use corewire_transport::Address;

use super::mon_messages::{
    MMonGetVersion, MMonGetVersionReply, MMonMap, MMonSubscribe, CEPH_MSG_MON_GET_VERSION_REPLY,
    CEPH_MSG_MON_MAP,
};
use super::monmap::MonMap;
use crate::connection::{ConnectionRef, PeerInfo};
use crate::dispatcher::{Dispatched, Dispatcher};
use crate::error::{MessengerError, Result};
use crate::message::{Message, MessagePayload};
use crate::messenger::Messenger;
use crate::policy::Policy;
use crate::wire::{EntityName, EntityType};

#[derive(Default)]
struct State {
    msgs: VecDeque<Message>,
    connected: bool,
    reset: Option<String>,
}

/// Collects what the connection to the monitor delivers.
#[derive(Default)]
struct Inbox {
    st: Mutex<State>,
    cv: Condvar,
}

impl Dispatcher for Inbox {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) -> Dispatched {
        self.st.lock().unwrap().msgs.push_back(msg);
        self.cv.notify_all();
        Dispatched::Claimed
    }
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        self.st.lock().unwrap().connected = true;
        self.cv.notify_all();
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, reason: &MessengerError) -> bool {
        self.st.lock().unwrap().reset = Some(reason.to_string());
        self.cv.notify_all();
        true
    }
}

/// A session with one monitor.
pub struct MonSession {
    msgr: Messenger,
    conn: ConnectionRef,
    inbox: Arc<Inbox>,
    next_handle: u64,
    /// How long a request may wait for its answer.
    pub timeout: Duration,
}

impl MonSession {
    /// Connects to the monitor at `mon` (a `tcp://` address of its msgr2 port) as
    /// `client.admin` and waits until the handshake completes (session READY).
    pub fn connect(rt: &Runtime, mon: &Address, timeout: Duration) -> Result<Self> {
        let msgr = Messenger::builder(EntityName::new(EntityType::Client, EntityName::NEW))
            .handle(rt.handle())
            .auth_id("admin")
            .policy(EntityType::Mon, Policy::lossy_client(0))
            .build()?;
        let inbox = Arc::new(Inbox::default());
        msgr.add_dispatcher_tail(inbox.clone())?;
        msgr.start()?;
        let conn = rt.block_on(msgr.connect(mon))?;
        let s = MonSession {
            msgr,
            conn,
            inbox,
            next_handle: 0,
            timeout,
        };
        s.wait(|st| st.connected.then_some(()), "the handshake")?;
        Ok(s)
    }

    /// What the handshake learnt about the monitor.
    pub fn peer_info(&self) -> Option<PeerInfo> {
        self.conn.peer_info()
    }

    /// The connection.
    pub fn connection(&self) -> &ConnectionRef {
        &self.conn
    }

    /// Why the session was reset, if it was.
    pub fn reset_reason(&self) -> Option<String> {
        self.inbox.st.lock().unwrap().reset.clone()
    }

    fn wait<T>(&self, mut f: impl FnMut(&mut State) -> Option<T>, what: &str) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.inbox.st.lock().unwrap();
        loop {
            if let Some(v) = f(&mut st) {
                return Ok(v);
            }
            if let Some(r) = &st.reset {
                return Err(MessengerError::state(
                    "mon session",
                    format!("connection reset while waiting for {what}: {r}"),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(MessengerError::state(
                    "mon session",
                    format!("no answer within {:?} waiting for {what}", self.timeout),
                ));
            }
            st = self.inbox.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Sends a message to the monitor.
    pub fn send<T: MessagePayload>(&self, m: &T) -> Result<()> {
        self.conn.send(Message::encode(m))
    }

    /// Waits for the next message of `msg_type` matching `pred` (others stay queued).
    pub fn recv_where(&self, msg_type: u16, pred: impl Fn(&Message) -> bool) -> Result<Message> {
        self.wait(
            |st| {
                let i = st
                    .msgs
                    .iter()
                    .position(|m| m.msg_type == msg_type && pred(m))?;
                st.msgs.remove(i)
            },
            &format!("message type {msg_type}"),
        )
    }

    /// Types of the messages received and not yet taken.
    pub fn pending_types(&self) -> Vec<u16> {
        let st = self.inbox.st.lock().unwrap();
        st.msgs.iter().map(|m| m.msg_type).collect()
    }

    /// `MMonGetVersion` for `what` ("osdmap", ...): the reply and the round-trip time.
    pub fn get_version(&mut self, what: &str) -> Result<(MMonGetVersionReply, Duration)> {
        self.next_handle += 1;
        let handle = self.next_handle;
        let t0 = Instant::now();
        self.send(&MMonGetVersion {
            handle,
            what: what.to_owned(),
        })?;
        let m = self.recv_where(CEPH_MSG_MON_GET_VERSION_REPLY, |m| {
            m.decode::<MMonGetVersionReply>()
                .is_ok_and(|r| r.handle == handle)
        })?;
        let rtt = t0.elapsed();
        Ok((m.decode()?, rtt))
    }

    /// Subscribes to "monmap" from epoch 0 and returns the decoded map.
    pub fn monmap(&self) -> Result<MonMap> {
        self.send(&MMonSubscribe::default().with("monmap", 0, 0))?;
        let m = self.recv_where(CEPH_MSG_MON_MAP, |_| true)?;
        let blob = m.decode::<MMonMap>()?.monmap;
        MonMap::decode(&blob).map_err(|source| MessengerError::Payload {
            msg_type: CEPH_MSG_MON_MAP,
            ty: "MonMap",
            source,
        })
    }

    /// Closes the connection and shuts the messenger down.
    pub fn shutdown(self, rt: &Runtime) -> Result<()> {
        let _ = self.conn.mark_down();
        rt.block_on(self.msgr.shutdown())?;
        rt.block_on(self.msgr.wait());
        Ok(())
    }
}
