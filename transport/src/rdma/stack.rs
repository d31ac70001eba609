//! [`RdmaTransport`] and [`RdmaListener`]: connection setup over the TCP side channel.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use corewire_runtime::net::{TcpListener as RawListener, TcpStream};
use corewire_runtime::{current_core, spawn_local, timer};

use crate::addr::{Address, RdmaOptions, TransportKind};
use crate::error::{Result, TransportError};
use crate::rdma::conn::{Conn, ConnParts, QP_CQ_BUDGET, RECV_BUFS, SQ_DEPTH};
use crate::rdma::core::{core_rdma, CoreRdma, CHUNK};
use crate::rdma::endpoint::RdmaEndpoint;
use crate::rdma::handoff::side_channel;
use crate::rdma::setup::{SetupMsg, READY};
use crate::rdma::verbs::{Access, MemoryRegion, QpConfig, QueuePair};
use crate::stack::{EndpointConfig, Listener, Transport};

/// The per-core RDMA stack (`rdma://HOST:PORT?dev=..&port=..&gid=..`).
#[derive(Debug, Clone, Default)]
pub struct RdmaTransport {
    cfg: EndpointConfig,
}

impl RdmaTransport {
    /// An RDMA stack with these endpoint limits. Device resources are opened per core on
    /// first use.
    pub fn new(cfg: EndpointConfig) -> RdmaTransport {
        RdmaTransport { cfg }
    }

    fn parts(addr: &Address) -> Result<(SocketAddr, RdmaOptions)> {
        match addr {
            Address::Rdma(sa, o) => Ok((*sa, o.clone())),
            other => Err(TransportError::WrongTransport {
                addr: other.clone(),
                stack: "rdma",
            }),
        }
    }
}

impl Transport for RdmaTransport {
    type Listener = RdmaListener;
    type Endpoint = RdmaEndpoint;

    fn kind(&self) -> TransportKind {
        TransportKind::Rdma
    }

    async fn listen(&self, addr: &Address) -> Result<RdmaListener> {
        let (sa, opts) = Self::parts(addr)?;
        let core = core_rdma(&opts)?;
        let l = RawListener::bind(sa).map_err(|source| TransportError::Io {
            addr: addr.clone(),
            op: "listen",
            source,
        })?;
        let local = Address::Rdma(l.local_addr(), opts.clone());
        let queue = Rc::new(AcceptQueue::default());
        spawn_local(acceptor(
            l,
            local.clone(),
            opts,
            core,
            self.cfg.clone(),
            queue.clone(),
        ))
        .detach();
        Ok(RdmaListener { local, queue })
    }

    async fn connect(&self, addr: &Address) -> Result<RdmaEndpoint> {
        let (sa, opts) = Self::parts(addr)?;
        let core = core_rdma(&opts)?;
        let limit = self.cfg.connect_timeout;
        let timeout = || TransportError::Timeout {
            peer: addr.clone(),
            op: "rdma connect",
            after_ms: limit.as_millis() as u64,
        };
        let cfg = self.cfg.clone();
        let r = timer::timeout(limit, async {
            let s = TcpStream::connect(sa)
                .await
                .map_err(|e| TransportError::from_io(addr, "connect", e))?;
            establish(core, s, addr.clone(), &opts, cfg).await
        })
        .await;
        r.map_err(|_| timeout())?
    }
}

/// What the acceptor task hands to `accept`, and the stop flag of a dropped listener.
#[derive(Default)]
struct AcceptQueue {
    ready: RefCell<VecDeque<Result<RdmaEndpoint>>>,
    accept_waker: RefCell<Option<Waker>>,
    stopped: Cell<bool>,
    stop_waker: RefCell<Option<Waker>>,
}

impl AcceptQueue {
    fn push(&self, r: Result<RdmaEndpoint>) {
        if self.stopped.get() {
            return; // the listener is gone: an accepted endpoint is dropped (closed)
        }
        self.ready.borrow_mut().push_back(r);
        if let Some(w) = self.accept_waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// An RDMA listener on one core (a TCP listener for the side channel).
///
/// An acceptor task accepts side-channel connections and runs each setup in its own task
/// (bounded by the connect timeout), so a slow or malicious client does not hold up the
/// others; `accept` returns the results in completion order.
pub struct RdmaListener {
    local: Address,
    queue: Rc<AcceptQueue>,
}

async fn acceptor(
    l: RawListener,
    local: Address,
    opts: RdmaOptions,
    core: Rc<CoreRdma>,
    cfg: EndpointConfig,
    q: Rc<AcceptQueue>,
) {
    loop {
        let stop = poll_fn(|cx| {
            if q.stopped.get() {
                Poll::Ready(None)
            } else {
                *q.stop_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let r = futures_lite::future::or(async { Some(l.accept().await) }, stop).await;
        let (s, peer) = match r {
            None => return,
            Some(Ok(x)) => x,
            Some(Err(source)) => {
                q.push(Err(TransportError::Io {
                    addr: local.clone(),
                    op: "accept",
                    source,
                }));
                // Do not spin on a persistent error (e.g. EMFILE).
                timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = Address::Rdma(peer, opts.clone());
        let (core, cfg, q, opts) = (core.clone(), cfg.clone(), q.clone(), opts.clone());
        spawn_local(async move {
            let limit = cfg.connect_timeout;
            let r = timer::timeout(limit, establish(core, s, peer.clone(), &opts, cfg)).await;
            q.push(r.unwrap_or_else(|_| {
                Err(TransportError::Timeout {
                    peer,
                    op: "rdma setup",
                    after_ms: limit.as_millis() as u64,
                })
            }));
        })
        .detach();
    }
}

impl Listener for RdmaListener {
    type Endpoint = RdmaEndpoint;

    /// The next connection whose setup finished. A failed setup is returned as this call's
    /// error (`Malformed`, `Timeout`, `Reset`); the listener stays usable.
    async fn accept(&self) -> Result<RdmaEndpoint> {
        poll_fn(|cx| {
            if let Some(r) = self.queue.ready.borrow_mut().pop_front() {
                return Poll::Ready(r);
            }
            *self.queue.accept_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn local_addr(&self) -> Address {
        self.local.clone()
    }
}

impl Drop for RdmaListener {
    fn drop(&mut self) {
        self.queue.stopped.set(true);
        self.queue.ready.borrow_mut().clear();
        if let Some(w) = self.queue.stop_waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Reads exactly `n` bytes (never more: the peer may already have sent what follows).
async fn read_exact(s: &TcpStream, peer: &Address, n: usize) -> Result<Vec<u8>> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let (r, buf) = s.read(Vec::<u8>::with_capacity(n - got.len())).await;
        match r {
            Ok(0) => {
                return Err(TransportError::Reset {
                    peer: peer.clone(),
                    reason: format!(
                        "side channel closed during rdma setup ({} of {n} bytes read)",
                        got.len()
                    ),
                })
            }
            Ok(_) => got.extend_from_slice(&buf),
            Err(e) => return Err(TransportError::from_io(peer, "rdma setup read", e)),
        }
    }
    if got.len() != n {
        return Err(TransportError::Malformed {
            peer: peer.clone(),
            what: format!("rdma setup: read {} bytes, expected {n}", got.len()),
        });
    }
    Ok(got)
}

async fn write_all(s: &TcpStream, peer: &Address, b: Vec<u8>) -> Result<()> {
    let (r, _) = s.write_all(b).await;
    r.map_err(|e| TransportError::from_io(peer, "rdma setup write", e))
}

/// Runs the setup of one connection on `s` (see [`crate::rdma::setup`]).
async fn establish(
    core: Rc<CoreRdma>,
    s: TcpStream,
    peer: Address,
    opts: &RdmaOptions,
    cfg: EndpointConfig,
) -> Result<RdmaEndpoint> {
    let core_id = current_core().ok_or(corewire_runtime::RuntimeError::NotOnCore(
        "RdmaTransport::connect",
    ))?;
    s.set_nodelay(true)
        .map_err(|e| TransportError::from_io(&peer, "set TCP_NODELAY", e))?;
    let local = s
        .local_addr()
        .map(|a| Address::Rdma(a, opts.clone()))
        .map_err(|e| TransportError::from_io(&peer, "getsockname", e))?;
    let budget = QP_CQ_BUDGET;
    core.reserve_cq(budget)?;
    // Gives the CQ budget back unless the connection took it over.
    struct Budget<'a>(&'a CoreRdma, u32, bool);
    impl Drop for Budget<'_> {
        fn drop(&mut self) {
            if !self.2 {
                self.0.release_cq(self.1);
            }
        }
    }
    let mut guard = Budget(&core, budget, false);
    let qp = create_qp(&core)?;
    let recv_mr = create_recv_mr(&core)?;
    let slabs = RxSlabs::reserve(&core, cfg.receive_slabs);
    let mine = SetupMsg {
        qp: qp.endpoint(),
        credits: RECV_BUFS as u16,
        buf_size: CHUNK as u32,
        zc: !slabs.0.is_empty(),
    };
    write_all(&s, &peer, mine.encode().to_vec()).await?;
    let theirs = read_exact(&s, &peer, SetupMsg::WIRE_LEN).await?;
    let theirs = SetupMsg::decode(&theirs).map_err(|what| TransportError::Malformed {
        peer: peer.clone(),
        what,
    })?;
    qp.connect(&theirs.qp)?;
    let conn = Rc::new(Conn::new(ConnParts {
        core_id,
        qp,
        recv_mr,
        peer: peer.clone(),
        local,
        stream: s,
        cfg,
        peer_credits: u32::from(theirs.credits),
        peer_buf: theirs.buf_size as usize,
        peer_zc: theirs.zc,
    }));
    guard.2 = true;
    drop(guard);
    slabs.hand_to(&core, &conn);
    let ep = RdmaEndpoint {
        conn: conn.clone(),
        core: core.clone(),
    };
    // From here on, dropping `ep` (on error) closes the connection and releases the budget.
    core.install(&conn)?;
    let stream = conn.stream();
    write_all(&stream, &peer, vec![READY]).await?;
    let r = read_exact(&stream, &peer, 1).await?;
    if r[0] != READY {
        return Err(TransportError::Malformed {
            peer,
            what: format!("rdma setup: expected the ready byte, got {:#04x}", r[0]),
        });
    }
    let side = conn.side.clone();
    // Advertise the receive slabs (the peer is ready now).
    core.mark_dirty(&conn);
    spawn_local(side_channel(Rc::downgrade(&conn), core, stream, side, None)).detach();
    Ok(ep)
}

/// Receive slabs reserved for a connection being set up; given back unless handed to it.
pub(crate) struct RxSlabs<'a>(pub Vec<u32>, &'a CoreRdma);

impl<'a> RxSlabs<'a> {
    /// Up to `wanted` slabs of `core`'s budget (`EndpointConfig::receive_slabs`).
    pub fn reserve(core: &'a CoreRdma, wanted: u32) -> RxSlabs<'a> {
        let slabs = match &core.zc {
            Some(p) if wanted > 0 => p.reserve_rx(wanted),
            _ => Vec::new(),
        };
        RxSlabs(slabs, core)
    }

    /// The connection owns them now and advertises them as soon as it is live.
    pub fn hand_to(mut self, core: &CoreRdma, conn: &Rc<Conn>) {
        let slabs = std::mem::take(&mut self.0);
        if let Some(p) = &core.zc {
            conn.zc.local_zc.set(!slabs.is_empty());
            p.adopt_rx(&slabs, conn);
            conn.zc.to_advertise.borrow_mut().extend(slabs);
        }
    }
}

impl Drop for RxSlabs<'_> {
    fn drop(&mut self) {
        if let Some(p) = &self.1.zc {
            p.release_rx(self.0.drain(..));
        }
    }
}

/// A connection's queue pair on `core` (in INIT). The peer may RDMA WRITE through it (into
/// the slabs advertised to it).
pub(crate) fn create_qp(core: &CoreRdma) -> Result<QueuePair> {
    let qcfg = QpConfig {
        max_send_wr: SQ_DEPTH,
        max_recv_wr: RECV_BUFS,
        max_send_sge: 1,
        max_recv_sge: 1,
        access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        ..QpConfig::default()
    };
    QueuePair::new(&core.pd, &core.cq, &core.cq, None, qcfg)
}

/// A connection's receive buffers on `core`: [`RECV_BUFS`] of [`CHUNK`] bytes.
pub(crate) fn create_recv_mr(core: &CoreRdma) -> Result<MemoryRegion> {
    MemoryRegion::new(&core.pd, RECV_BUFS as usize * CHUNK, Access::LOCAL_WRITE)
}
