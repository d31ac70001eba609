//! [`ShmTransport`] and [`ShmListener`]: the intra-host shared-memory stack for `shm://NAME`.
//!
//! # Naming and sockets
//! A listener for `shm://NAME` binds a Unix stream socket at `SOCKET_DIR/NAME.sock`
//! (`SOCKET_DIR` defaults to `/tmp/corewire-shm`, created if missing; see
//! [`ShmTransport::with_socket_dir`]). Next to it, `NAME.lock` is held with `flock` for the
//! listener's lifetime: if the lock is free, nobody listens, so a leftover socket file is
//! stale and is removed before binding; if it is held, `listen` fails with `AddrInUse`. The
//! lock dies with its process, so a crashed listener never blocks the name. The socket file
//! (only if it is still ours) is removed when the listener drops; lock files are left in place
//! (removing them would race with a concurrent `listen`).
//!
//! # Accepting
//! A background task accepts connections and runs each handshake
//! ([`crate::shm::handshake`]) in its own task, bounded by
//! [`ShmOptions::handshake_timeout`], so a slow or hostile client cannot hold up others.
//! [`Listener::accept`] returns the results in completion order: an endpoint, or the error
//! of a failed handshake (`Malformed`, `Reset`, `Timeout`); the listener stays usable either
//! way. An accepted endpoint's peer address is `shm://NAME.peer-PID-SEQ` (the client's pid
//! from `SO_PEERCRED`); a connecting endpoint's local address is `shm://NAME.client-PID-SEQ`.
//!
//! # Regions
//! Each connection gets its own region created by the acceptor: two rings of
//! [`ShmOptions::ring_capacity`] and two buffer areas of [`ShmOptions::area_len`] (layout in
//! [`crate::shm::layout`]). With [`ShmOptions::huge_pages`], the region is rounded up to
//! 2 MiB and `MFD_HUGETLB` is tried; if that fails, normal pages are used and the fallback
//! is logged (a warning the first time; later regions use normal pages directly).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use corewire_runtime::net::{UnixListener, UnixStream};
use corewire_runtime::{debug_assert_on_core, timer, RuntimeError};
use futures_lite::future::or;

use crate::addr::{Address, TransportKind};
use crate::error::{Result, TransportError};
use crate::shm::conn::{ConnParts, Tunables, TxState};
use crate::shm::endpoint::ShmEndpoint;
use crate::shm::handshake::{self, Limits, OfferSpec};
use crate::shm::layout::{Layout, Mapped};
use crate::shm::poller::StopSignal;
use crate::shm::ring::RECORD_HEADER;
use crate::stack::{EndpointConfig, Listener, Transport};

static HUGE_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether a huge-page region failed before in this process (later ones skip the attempt).
pub(crate) fn huge_pages_failed() -> bool {
    HUGE_FAILED.load(Ordering::Relaxed)
}

pub(crate) fn note_huge_pages_failed() {
    if !HUGE_FAILED.swap(true, Ordering::Relaxed) {
        tracing::warn!("shm: huge pages unavailable, regions use normal pages from now on");
    }
}

/// Options of the shm stack. Fields document their defaults.
#[derive(Debug, Clone)]
pub struct ShmOptions {
    /// Directory of the listeners' Unix sockets. Default: `/tmp/corewire-shm`.
    pub socket_dir: PathBuf,
    /// Data capacity of each direction's ring (power of two, 4 KiB..=512 MiB). Default: 256 KiB.
    pub ring_capacity: usize,
    /// Length of each direction's buffer area for large payloads (multiple of 4 KiB, at
    /// least 64 KiB). `Endpoint::alloc` hands out buffers of up to half of it (zero-copy
    /// sends), so size it at 2x (for pipelining, 4x) the largest payload that should go
    /// without a copy. Default: 2 MiB.
    pub area_len: usize,
    /// Buffers up to this length go inline into the ring (clamped to a quarter of the ring).
    /// Default: 8 KiB (so the area, 8x the ring, carries everything larger).
    pub inline_max: usize,
    /// Largest chunk of a large buffer in the area (clamped to 64 B..=half the area).
    /// Default: 64 KiB.
    pub chunk_size: usize,
    /// Received bytes held for `recv` before the endpoint stops taking data. Default: 1 MiB.
    pub recv_queue_bytes: usize,
    /// Try huge pages for regions. Default: true.
    pub huge_pages: bool,
    /// Time limit of the accepting side's handshake. Default: 5 s. (The connecting side uses
    /// [`EndpointConfig::connect_timeout`] for connect and handshake together.)
    pub handshake_timeout: Duration,
    /// Largest ring capacity accepted from a listener. Default: 16 MiB.
    pub max_ring_capacity: usize,
    /// Largest buffer area accepted from a listener. Default: 64 MiB.
    pub max_area_len: usize,
    /// Largest region accepted from a listener. Default: 256 MiB.
    pub max_region_len: usize,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            socket_dir: PathBuf::from("/tmp/corewire-shm"),
            ring_capacity: 256 << 10,
            area_len: 2 << 20,
            inline_max: 8 << 10,
            chunk_size: 64 << 10,
            recv_queue_bytes: 1 << 20,
            huge_pages: true,
            handshake_timeout: Duration::from_secs(5),
            max_ring_capacity: 16 << 20,
            max_area_len: 64 << 20,
            max_region_len: 256 << 20,
        }
    }
}

/// The shm transport of one core (cheap; create one per core).
#[derive(Debug, Clone)]
pub struct ShmTransport {
    cfg: EndpointConfig,
    opts: ShmOptions,
}

fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn on_core(what: &'static str) -> Result<usize> {
    corewire_runtime::current_core().ok_or(TransportError::Runtime(RuntimeError::NotOnCore(what)))
}

impl ShmTransport {
    /// A transport with default [`ShmOptions`].
    pub fn new(cfg: EndpointConfig) -> ShmTransport {
        Self::with_options(cfg, ShmOptions::default())
    }

    /// A transport with explicit options.
    pub fn with_options(cfg: EndpointConfig, opts: ShmOptions) -> ShmTransport {
        ShmTransport { cfg, opts }
    }

    /// Use `dir` for listener sockets (both sides must agree).
    pub fn with_socket_dir(mut self, dir: impl Into<PathBuf>) -> ShmTransport {
        self.opts.socket_dir = dir.into();
        self
    }

    /// The options in force.
    pub fn options(&self) -> &ShmOptions {
        &self.opts
    }

    /// Where the listener for `shm://name` binds its socket.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.opts.socket_dir.join(format!("{name}.sock"))
    }

    fn name<'a>(&self, addr: &'a Address) -> Result<&'a str> {
        match addr {
            // Names become file names: the same rule as `shm://NAME` parsing, so an address
            // built by hand cannot escape the socket directory.
            Address::Shm(n) => {
                let ok = !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && n != "."
                    && n != "..";
                if ok {
                    Ok(n)
                } else {
                    Err(TransportError::InvalidAddress {
                        addr: addr.to_string(),
                        reason: "shm NAME must be 1-64 characters of [A-Za-z0-9._-]".into(),
                        expected: "shm://NAME",
                    })
                }
            }
            other => Err(TransportError::WrongTransport {
                addr: other.clone(),
                stack: "shm",
            }),
        }
    }

    fn tunables(&self) -> Tunables {
        let o = &self.opts;
        let max_payload = o.ring_capacity / 2 - RECORD_HEADER;
        Tunables {
            inline_max: o.inline_max.min(o.ring_capacity / 4).min(max_payload),
            chunk_size: o.chunk_size.clamp(64, (o.area_len / 2).max(64)),
            recv_queue_bytes: o.recv_queue_bytes.max(1),
            recv_buf_size: self.cfg.recv_buf_size.max(1),
        }
    }

    fn parts(&self, sock: OwnedFd, mapped: Mapped, peer: Address, local: Address) -> ConnParts {
        ConnParts {
            peer,
            local,
            tun: self.tunables(),
            cfg: self.cfg.clone(),
            sock,
            mapped: Some(mapped),
            recvq: VecDeque::new(),
            tx_state: TxState::Open,
            peer_eos: false,
            dead: None,
        }
    }
}

/// Takes ownership of a stream's descriptor (a duplicate; the stream is dropped).
fn stream_fd(s: &UnixStream, addr: &Address) -> Result<OwnedFd> {
    // SAFETY: `s` is alive for the whole call, so its descriptor is open.
    let b = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
    b.try_clone_to_owned().map_err(|e| TransportError::Io {
        addr: addr.clone(),
        op: "dup shm socket",
        source: e,
    })
}

fn peer_pid(s: &UnixStream) -> i32 {
    // SAFETY: `ucred` is plain data; zeroed is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        cred.pid
    } else {
        0
    }
}

impl Transport for ShmTransport {
    type Listener = ShmListener;
    type Endpoint = ShmEndpoint;

    fn kind(&self) -> TransportKind {
        TransportKind::Shm
    }

    async fn listen(&self, addr: &Address) -> Result<ShmListener> {
        let name = self.name(addr)?.to_string();
        let core = on_core("shm listen")?;
        Layout::new(self.opts.ring_capacity, self.opts.area_len, false).map_err(|e| {
            TransportError::Unavailable {
                what: format!("invalid shm options: {e}"),
            }
        })?;
        let io = |op: &'static str| {
            let addr = addr.clone();
            move |source| TransportError::Io { addr, op, source }
        };
        let dir = &self.opts.socket_dir;
        std::fs::create_dir_all(dir).map_err(io("create the shm socket directory"))?;
        let lock = lock_name(&dir.join(format!("{name}.lock"))).map_err(io("lock the shm name"))?;
        let path = self.socket_path(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale shm socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove a stale shm socket")(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io("bind the shm socket"))?;
        let ino = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        let shared = Rc::new(ListenerShared::default());
        let acceptor = Acceptor {
            listener,
            shared: shared.clone(),
            t: self.clone(),
            name: name.clone(),
            local: addr.clone(),
        };
        corewire_runtime::try_spawn_local(acceptor.run())?.detach();
        Ok(ShmListener {
            shared,
            local: addr.clone(),
            path,
            ino,
            _lock: lock,
            core,
        })
    }

    async fn connect(&self, addr: &Address) -> Result<ShmEndpoint> {
        let name = self.name(addr)?.to_string();
        on_core("shm connect")?;
        let path = self.socket_path(&name);
        let peer = addr.clone();
        let limits = Limits {
            max_ring_capacity: self.opts.max_ring_capacity,
            max_area_len: self.opts.max_area_len,
            max_region_len: self.opts.max_region_len,
        };
        let limit = self.cfg.connect_timeout;
        let work = async {
            let s = UnixStream::connect(&path)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        TransportError::Refused { peer: peer.clone() }
                    }
                    _ => TransportError::from_io(&peer, "shm connect", e),
                })?;
            let mapped = handshake::connect_side(&s, &peer, &limits).await?;
            Ok::<_, TransportError>((stream_fd(&s, &peer)?, mapped))
        };
        let (sock, mapped) =
            timer::timeout(limit, work)
                .await
                .map_err(|_| TransportError::Timeout {
                    peer: peer.clone(),
                    op: "shm connect",
                    after_ms: limit.as_millis() as u64,
                })??;
        let local = Address::Shm(format!(
            "{name}.client-{}-{}",
            std::process::id(),
            next_seq()
        ));
        ShmEndpoint::start(self.parts(sock, mapped, peer, local))
    }
}

fn lock_name(path: &Path) -> std::io::Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another listener holds {}", path.display()),
            ));
        }
        return Err(e);
    }
    Ok(f)
}

#[derive(Default)]
struct ListenerShared {
    ready: RefCell<VecDeque<Result<ShmEndpoint>>>,
    waker: RefCell<Option<Waker>>,
    stop: StopSignal,
}

impl ListenerShared {
    fn push(&self, r: Result<ShmEndpoint>) {
        self.ready.borrow_mut().push_back(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct Acceptor {
    listener: UnixListener,
    shared: Rc<ListenerShared>,
    t: ShmTransport,
    name: String,
    local: Address,
}

impl Acceptor {
    async fn run(self) {
        let stop = self.shared.clone();
        loop {
            let next = or(async { Some(self.listener.accept().await) }, async {
                stop.stop.wait().await;
                None
            })
            .await;
            let Some(next) = next else { return };
            match next {
                Ok(s) => {
                    let task =
                        handshake_task(s, self.shared.clone(), self.t.clone(), self.name.clone());
                    match corewire_runtime::try_spawn_local(task) {
                        Ok(t) => t.detach(),
                        Err(e) => self.shared.push(Err(e.into())),
                    }
                }
                Err(e) => {
                    tracing::warn!(addr = %self.local, error = %e, "shm accept failed");
                    self.shared.push(Err(TransportError::Io {
                        addr: self.local.clone(),
                        op: "shm accept",
                        source: e,
                    }));
                    // E.g. out of descriptors: do not spin on it.
                    timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

async fn handshake_task(s: UnixStream, shared: Rc<ListenerShared>, t: ShmTransport, name: String) {
    let peer = Address::Shm(format!("{name}.peer-{}-{}", peer_pid(&s), next_seq()));
    let spec = OfferSpec {
        ring_capacity: t.opts.ring_capacity,
        area_len: t.opts.area_len,
        huge: t.opts.huge_pages,
        region_name: format!("corewire-shm:{name}"),
    };
    let limit = t.opts.handshake_timeout;
    let work = async {
        timer::timeout(limit, handshake::accept_side(&s, &peer, &spec))
            .await
            .ok()
    };
    let out = or(async { Some(work.await) }, async {
        shared.stop.wait().await;
        None
    })
    .await;
    let r = match out {
        None => return, // the listener is gone
        Some(None) => Err(TransportError::Timeout {
            peer: peer.clone(),
            op: "shm handshake",
            after_ms: limit.as_millis() as u64,
        }),
        Some(Some(Err(e))) => Err(e),
        Some(Some(Ok(mapped))) => stream_fd(&s, &peer).and_then(|fd| {
            ShmEndpoint::start(t.parts(fd, mapped, peer.clone(), Address::Shm(name.clone())))
        }),
    };
    if let Err(e) = &r {
        tracing::debug!(%peer, error = %e, "shm handshake failed");
    }
    if !shared.stop.is_set() {
        shared.push(r);
    }
}

/// A listening `shm://NAME`. Dropping it stops accepting and removes its socket file.
pub struct ShmListener {
    shared: Rc<ListenerShared>,
    local: Address,
    path: PathBuf,
    ino: Option<(u64, u64)>,
    _lock: File,
    core: usize,
}

impl std::fmt::Debug for ShmListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmListener")
            .field("local", &self.local)
            .field("path", &self.path)
            .finish()
    }
}

impl ShmListener {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Listener for ShmListener {
    type Endpoint = ShmEndpoint;

    async fn accept(&self) -> Result<ShmEndpoint> {
        debug_assert_on_core(self.core);
        poll_fn(|cx| match self.shared.ready.borrow_mut().pop_front() {
            Some(r) => Poll::Ready(r),
            None => {
                *self.shared.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn local_addr(&self) -> Address {
        self.local.clone()
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        self.shared.stop.stop();
        let ours = std::fs::metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.ino)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        // Endpoints accepted but never taken are dropped (aborted) with the queue.
        self.shared.ready.borrow_mut().clear();
    }
}
