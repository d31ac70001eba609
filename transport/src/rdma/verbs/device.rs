//! Device list, device context, port attributes and GID selection.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::rc::Rc;

use rdma_sys::{
    ___ibv_query_port, ibv_close_device, ibv_context, ibv_device, ibv_device_attr,
    ibv_free_device_list, ibv_get_device_list, ibv_get_device_name, ibv_gid, ibv_mtu,
    ibv_open_device, ibv_port_attr, ibv_port_state, ibv_query_device, ibv_query_gid,
};

use super::{rc_err, verbs_err};
use crate::addr::RdmaOptions;
use crate::error::{Result, TransportError};

/// `IBV_LINK_LAYER_INFINIBAND` and `IBV_LINK_LAYER_ETHERNET` (`verbs.h` defines, not in the
/// bindings).
const LINK_LAYER_INFINIBAND: u8 = 1;
const LINK_LAYER_ETHERNET: u8 = 2;

/// The hint appended to every "no RDMA here" error.
const RXE_VM_HINT: &str = "run RDMA code inside `scripts/rxe-vm COMMAND...`, which boots a \
                           kernel with Soft-RoCE and a device rxe0";

/// The names of the RDMA devices libibverbs sees, in its order.
///
/// Fails with [`TransportError::NoRdmaDevice`] when the device list cannot be read at all
/// (with `ENOSYS`: the running kernel has no RDMA support). An empty list is `Ok`.
pub fn device_names() -> Result<Vec<String>> {
    Ok(DeviceList::get("device (any)")?.names())
}

/// The array returned by `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: *mut *mut ibv_device,
    len: usize,
}

impl DeviceList {
    /// `wanted` describes the caller's selection, for the error.
    fn get(wanted: &str) -> Result<DeviceList> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out-pointer for the call; the returned array (or NULL) is
        // owned by us until `ibv_free_device_list`, which `Drop` calls.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = io::Error::last_os_error();
            let reason = if e.raw_os_error() == Some(libc::ENOSYS) {
                format!(
                    "ibv_get_device_list failed with ENOSYS: the running kernel has no RDMA \
                     support (no ib_uverbs: /sys/class/infiniband_verbs is missing, so \
                     libibverbs finds no uverbs ABI); {RXE_VM_HINT}"
                )
            } else {
                format!("ibv_get_device_list failed: {e}")
            };
            return Err(TransportError::NoRdmaDevice {
                wanted: wanted.to_string(),
                found: Vec::new(),
                reason,
            });
        }
        Ok(DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    fn devices(&self) -> impl Iterator<Item = *mut ibv_device> + '_ {
        // SAFETY: `list` holds `len` valid device pointers (followed by a NULL) until it is
        // freed in `Drop`, which cannot happen while `self` is borrowed.
        (0..self.len).map(move |i| unsafe { *self.list.add(i) })
    }

    fn names(&self) -> Vec<String> {
        self.devices().map(device_name).collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from `ibv_get_device_list` and is freed exactly once; contexts
        // opened from its devices stay valid after the list is freed (libibverbs refcounts
        // devices).
        unsafe { ibv_free_device_list(self.list) };
    }
}

fn device_name(dev: *mut ibv_device) -> String {
    // SAFETY: `dev` is a device from a live device list; `ibv_get_device_name` returns a
    // NUL-terminated string owned by the device (or NULL), copied out before returning.
    unsafe {
        let p = ibv_get_device_name(dev);
        if p.is_null() {
            String::from("?")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// A path MTU (`enum ibv_mtu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mtu {
    M256,
    M512,
    M1024,
    M2048,
    M4096,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> u32 {
        match self {
            Mtu::M256 => 256,
            Mtu::M512 => 512,
            Mtu::M1024 => 1024,
            Mtu::M2048 => 2048,
            Mtu::M4096 => 4096,
        }
    }

    /// From `enum ibv_mtu`.
    pub fn from_raw(v: u32) -> Option<Mtu> {
        Some(match v {
            ibv_mtu::IBV_MTU_256 => Mtu::M256,
            ibv_mtu::IBV_MTU_512 => Mtu::M512,
            ibv_mtu::IBV_MTU_1024 => Mtu::M1024,
            ibv_mtu::IBV_MTU_2048 => Mtu::M2048,
            ibv_mtu::IBV_MTU_4096 => Mtu::M4096,
            _ => return None,
        })
    }

    /// To `enum ibv_mtu`.
    pub fn to_raw(self) -> u32 {
        match self {
            Mtu::M256 => ibv_mtu::IBV_MTU_256,
            Mtu::M512 => ibv_mtu::IBV_MTU_512,
            Mtu::M1024 => ibv_mtu::IBV_MTU_1024,
            Mtu::M2048 => ibv_mtu::IBV_MTU_2048,
            Mtu::M4096 => ibv_mtu::IBV_MTU_4096,
        }
    }
}

/// A port's logical state (`enum ibv_port_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    Down,
    Init,
    Armed,
    Active,
    ActiveDefer,
    Other(u32),
}

impl PortState {
    fn from_raw(v: u32) -> PortState {
        match v {
            ibv_port_state::IBV_PORT_DOWN => PortState::Down,
            ibv_port_state::IBV_PORT_INIT => PortState::Init,
            ibv_port_state::IBV_PORT_ARMED => PortState::Armed,
            ibv_port_state::IBV_PORT_ACTIVE => PortState::Active,
            ibv_port_state::IBV_PORT_ACTIVE_DEFER => PortState::ActiveDefer,
            v => PortState::Other(v),
        }
    }
}

/// A port's link layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    InfiniBand,
    /// RoCE (RDMA over Converged Ethernet), including Soft-RoCE (`rxe`).
    Ethernet,
    Unspecified(u8),
}

/// A snapshot of `ibv_query_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    pub state: PortState,
    /// The MTU the link runs at; queue pairs use it (capped by the peer's) as path MTU.
    pub active_mtu: Mtu,
    pub max_mtu: Mtu,
    /// The port's LID (0 on RoCE).
    pub lid: u16,
    pub link_layer: LinkLayer,
    pub gid_tbl_len: u32,
    pub max_msg_sz: u32,
}

/// Device limits from `ibv_query_device` that the wrappers check against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCaps {
    pub phys_port_cnt: u8,
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    pub max_srq_wr: u32,
    pub max_srq_sge: u32,
    pub max_mr_size: u64,
    pub max_qp_rd_atom: u32,
    pub max_qp_init_rd_atom: u32,
}

/// A 128-bit GID, in network byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`).
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        Ipv6Addr::from(self.0).to_ipv4_mapped()
    }

    /// Link-local: `fe80::/10`, or IPv4-mapped `169.254.0.0/16`.
    pub fn is_link_local(&self) -> bool {
        match self.ipv4() {
            Some(v4) => v4.is_link_local(),
            None => self.0[0] == 0xfe && (self.0[1] & 0xc0) == 0x80,
        }
    }

    pub(crate) fn to_raw(self) -> ibv_gid {
        ibv_gid { raw: self.0 }
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Ipv6Addr::from(self.0), f)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// The type of a GID table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GidType {
    /// An InfiniBand GID (the port's link layer is InfiniBand).
    Ib,
    /// RoCE v1 (Ethernet, not routable).
    RoceV1,
    /// RoCE v2 (UDP/IP encapsulated, routable).
    RoceV2,
    /// The kernel did not say (`gid_attrs/types/N` unreadable).
    Unknown,
}

/// One populated entry of a port's GID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidEntry {
    pub index: u8,
    pub gid: Gid,
    pub gid_type: GidType,
}

impl fmt::Display for GidEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gid[{}]={} ({:?})", self.index, self.gid, self.gid_type)
    }
}

/// An open device (`ibv_context`) bound to one port and one GID index.
///
/// Opened with [`Context::open`]; closed (`ibv_close_device`) when the last object holding
/// it is dropped.
pub struct Context {
    ctx: *mut ibv_context,
    name: String,
    port: u8,
    gid: GidEntry,
    port_info: PortInfo,
    caps: DeviceCaps,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid", &self.gid)
            .field("port_info", &self.port_info)
            .finish()
    }
}

impl Context {
    /// Opens the device, port and GID an `rdma://` address selects.
    ///
    /// - `dev`: the device by name; `None` takes the first device whose port is ACTIVE.
    /// - `port`: 1-based, default 1. The port must be ACTIVE.
    /// - `gid`: the GID index; `None` selects a RoCE v2 GID, preferring a non-link-local
    ///   IPv4-mapped one, then a non-link-local IPv6 one, then a link-local one (index 0 on
    ///   an InfiniBand link layer).
    pub fn open(opts: &RdmaOptions) -> Result<Rc<Context>> {
        let port = opts.port.unwrap_or(1);
        let wanted = match &opts.dev {
            Some(d) => format!("device {d:?} (port {port})"),
            None => format!("device with port {port} ACTIVE"),
        };
        let list = DeviceList::get(&wanted)?;
        let names = list.names();
        if names.is_empty() {
            return Err(TransportError::NoRdmaDevice {
                wanted,
                found: names,
                reason: format!(
                    "libibverbs lists no devices (no RDMA driver bound; for Soft-RoCE: \
                     `rdma link add rxe0 type rxe netdev IFACE`); {RXE_VM_HINT}"
                ),
            });
        }
        let ctx = match &opts.dev {
            Some(d) => {
                let Some(i) = names.iter().position(|n| n == d) else {
                    return Err(TransportError::NoRdmaDevice {
                        wanted,
                        found: names,
                        reason: "no device of that name".into(),
                    });
                };
                let dev = list.devices().nth(i).expect("index from names");
                RawContext::open(dev, d)?
            }
            None => {
                let mut states = Vec::new();
                let mut chosen = None;
                for (dev, name) in list.devices().zip(&names) {
                    let c = match RawContext::open(dev, name) {
                        Ok(c) => c,
                        Err(e) => {
                            states.push(format!("{name} ({e})"));
                            continue;
                        }
                    };
                    match c.query_port(port) {
                        Ok(p) if p.state == PortState::Active => {
                            chosen = Some(c);
                            break;
                        }
                        Ok(p) => states.push(format!("{name} (port {port} {:?})", p.state)),
                        Err(_) => states.push(format!("{name} (no port {port})")),
                    }
                }
                match chosen {
                    Some(c) => c,
                    None => {
                        return Err(TransportError::NoRdmaDevice {
                            wanted,
                            found: states,
                            reason: "no device has that port ACTIVE".into(),
                        })
                    }
                }
            }
        };
        drop(list);
        Context::finish_open(ctx, port, opts.gid)
    }

    /// [`Context::open`] by device name, port and optional GID index.
    pub fn open_by_name(name: &str, port: u8, gid_index: Option<u8>) -> Result<Rc<Context>> {
        Context::open(&RdmaOptions {
            dev: Some(name.to_string()),
            port: Some(port),
            gid: gid_index,
        })
    }

    fn finish_open(raw: RawContext, port: u8, gid_index: Option<u8>) -> Result<Rc<Context>> {
        let caps = raw.query_device()?;
        if port == 0 || port > caps.phys_port_cnt {
            return Err(TransportError::NoRdmaDevice {
                wanted: format!("port {port} on device {:?}", raw.name),
                found: (1..=caps.phys_port_cnt)
                    .map(|p| format!("{} port {p}", raw.name))
                    .collect(),
                reason: format!("{} has {} port(s)", raw.name, caps.phys_port_cnt),
            });
        }
        let port_info = raw.query_port(port)?;
        if port_info.state != PortState::Active {
            return Err(TransportError::NoRdmaDevice {
                wanted: format!("ACTIVE port {port} on device {:?}", raw.name),
                found: vec![format!("{} port {port} {:?}", raw.name, port_info.state)],
                reason: "the port is not ACTIVE (link down, or no subnet manager on IB)".into(),
            });
        }
        let table = raw.gid_table(port, &port_info)?;
        let gid = match gid_index {
            Some(i) => match table.iter().find(|e| e.index == i) {
                Some(e) => *e,
                None => {
                    return Err(TransportError::NoRdmaDevice {
                        wanted: format!("GID index {i} on {} port {port}", raw.name),
                        found: table.iter().map(|e| e.to_string()).collect(),
                        reason: "that GID table entry is empty or out of range".into(),
                    })
                }
            },
            None => select_gid(&table, port_info.link_layer).ok_or_else(|| {
                TransportError::NoRdmaDevice {
                    wanted: format!("RoCE v2 GID on {} port {port}", raw.name),
                    found: table.iter().map(|e| e.to_string()).collect(),
                    reason: "no populated RoCE v2 GID (is an IP address configured on the \
                             netdev?); pass a GID index explicitly to use another type"
                        .into(),
                }
            })?,
        };
        tracing::debug!(
            dev = %raw.name, port, gid = %gid.gid, gid_index = gid.index,
            gid_type = ?gid.gid_type, mtu = port_info.active_mtu.bytes(),
            "rdma: opened device"
        );
        let mut raw = raw;
        let ctx = std::mem::replace(&mut raw.ctx, std::ptr::null_mut());
        let name = std::mem::take(&mut raw.name);
        Ok(Rc::new(Context {
            ctx,
            name,
            port,
            gid,
            port_info,
            caps,
        }))
    }

    /// The device name (`rxe0`, `mlx5_0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port number this context uses.
    pub fn port(&self) -> u8 {
        self.port
    }

    /// The GID index queue pairs use as source GID.
    pub fn gid_index(&self) -> u8 {
        self.gid.index
    }

    pub fn gid(&self) -> Gid {
        self.gid.gid
    }

    pub fn gid_type(&self) -> GidType {
        self.gid.gid_type
    }

    /// The port attributes as of opening (see [`Context::query_port`] for fresh ones).
    pub fn port_info(&self) -> &PortInfo {
        &self.port_info
    }

    pub fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    /// Queries the port again (state and MTU can change at run time).
    pub fn query_port(&self) -> Result<PortInfo> {
        query_port_raw(self.ctx, &self.name, self.port)
    }

    /// The populated entries of this port's GID table.
    pub fn gid_table(&self) -> Result<Vec<GidEntry>> {
        gid_table_raw(self.ctx, &self.name, self.port, &self.port_info)
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.ctx
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from `ibv_open_device` and is closed exactly once. Every object
        // created from it holds an `Rc<Context>` (directly or through its parent), so none is
        // left when this runs.
        let rc = unsafe { ibv_close_device(self.ctx) };
        if rc != 0 {
            tracing::warn!(dev = %self.name, error = %rc_err(rc), "rdma: ibv_close_device failed");
        }
    }
}

/// An opened device before port and GID are validated; closes itself on error paths.
struct RawContext {
    ctx: *mut ibv_context,
    name: String,
}

impl RawContext {
    fn open(dev: *mut ibv_device, name: &str) -> Result<RawContext> {
        // SAFETY: `dev` is a device of a device list that is still alive (the caller holds
        // it); the returned context is owned by the `RawContext`.
        let ctx = unsafe { ibv_open_device(dev) };
        if ctx.is_null() {
            return Err(verbs_err(
                "ibv_open_device",
                io::Error::last_os_error(),
                format!("device {name}"),
            ));
        }
        Ok(RawContext {
            ctx,
            name: name.to_string(),
        })
    }

    fn query_device(&self) -> Result<DeviceCaps> {
        let mut attr = MaybeUninit::<ibv_device_attr>::zeroed();
        // SAFETY: `ctx` is an open context and `attr` points to writable memory of the
        // struct's size; the call fills it in.
        let rc = unsafe { ibv_query_device(self.ctx, attr.as_mut_ptr()) };
        if rc != 0 {
            return Err(verbs_err(
                "ibv_query_device",
                rc_err(rc),
                format!("device {}", self.name),
            ));
        }
        // SAFETY: zero-initialized then filled by a successful ibv_query_device; every field
        // is a plain integer or array, valid for any bit pattern.
        let a = unsafe { attr.assume_init() };
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(DeviceCaps {
            phys_port_cnt: a.phys_port_cnt,
            max_qp_wr: u(a.max_qp_wr),
            max_sge: u(a.max_sge),
            max_cqe: u(a.max_cqe),
            max_srq_wr: u(a.max_srq_wr),
            max_srq_sge: u(a.max_srq_sge),
            max_mr_size: a.max_mr_size,
            max_qp_rd_atom: u(a.max_qp_rd_atom),
            max_qp_init_rd_atom: u(a.max_qp_init_rd_atom),
        })
    }

    fn query_port(&self, port: u8) -> Result<PortInfo> {
        query_port_raw(self.ctx, &self.name, port)
    }

    fn gid_table(&self, port: u8, info: &PortInfo) -> Result<Vec<GidEntry>> {
        gid_table_raw(self.ctx, &self.name, port, info)
    }
}

impl Drop for RawContext {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        // SAFETY: `ctx` came from `ibv_open_device`, nothing was created from it, and it is
        // closed exactly once (a `RawContext` turned into a `Context` has its pointer taken
        // and replaced by NULL first).
        unsafe { ibv_close_device(self.ctx) };
    }
}

fn query_port_raw(ctx: *mut ibv_context, name: &str, port: u8) -> Result<PortInfo> {
    let mut attr = MaybeUninit::<ibv_port_attr>::zeroed();
    // SAFETY: `ctx` is an open context; `attr` is zeroed writable memory of the full
    // `ibv_port_attr` size. `___ibv_query_port` is verbs.h's inline `ibv_query_port`: it
    // passes the struct size to the provider, or falls back to the compat entry point, which
    // writes a prefix of the same layout.
    let rc = unsafe { ___ibv_query_port(ctx, port, attr.as_mut_ptr()) };
    if rc != 0 {
        return Err(verbs_err(
            "ibv_query_port",
            rc_err(rc),
            format!("device {name} port {port}"),
        ));
    }
    // SAFETY: zero-initialized and filled by a successful query; all fields are integers.
    let a = unsafe { attr.assume_init() };
    let bad_mtu = |what: &str, v: u32| {
        verbs_err(
            "ibv_query_port",
            io::Error::from(io::ErrorKind::InvalidData),
            format!("device {name} port {port}: {what} {v} is not an ibv_mtu"),
        )
    };
    Ok(PortInfo {
        state: PortState::from_raw(a.state),
        active_mtu: Mtu::from_raw(a.active_mtu)
            .ok_or_else(|| bad_mtu("active_mtu", a.active_mtu))?,
        max_mtu: Mtu::from_raw(a.max_mtu).ok_or_else(|| bad_mtu("max_mtu", a.max_mtu))?,
        lid: a.lid,
        link_layer: match a.link_layer {
            LINK_LAYER_INFINIBAND => LinkLayer::InfiniBand,
            LINK_LAYER_ETHERNET => LinkLayer::Ethernet,
            v => LinkLayer::Unspecified(v),
        },
        gid_tbl_len: u32::try_from(a.gid_tbl_len).unwrap_or(0),
        max_msg_sz: a.max_msg_sz,
    })
}

/// Reads the populated GID entries (`ibv_query_gid`) with their types from sysfs
/// (`/sys/class/infiniband/DEV/ports/PORT/gid_attrs/types/N`: "IB/RoCE v1" or "RoCE v2").
fn gid_table_raw(
    ctx: *mut ibv_context,
    name: &str,
    port: u8,
    info: &PortInfo,
) -> Result<Vec<GidEntry>> {
    let types_dir: PathBuf =
        format!("/sys/class/infiniband/{name}/ports/{port}/gid_attrs/types").into();
    let mut out = Vec::new();
    for index in 0..info.gid_tbl_len.min(256) {
        let index = index as u8;
        let mut raw = ibv_gid { raw: [0; 16] };
        // SAFETY: `ctx` is an open context and `raw` a writable `ibv_gid`.
        let rc = unsafe { ibv_query_gid(ctx, port, i32::from(index), &mut raw) };
        if rc != 0 {
            // Newer kernels report empty entries as errors (ENODATA/EINVAL): skip them.
            continue;
        }
        // SAFETY: every bit pattern is a valid `[u8; 16]`, the union's `raw` view.
        let gid = Gid(unsafe { raw.raw });
        if gid.is_zero() {
            continue;
        }
        let gid_type = if info.link_layer == LinkLayer::InfiniBand {
            GidType::Ib
        } else {
            match std::fs::read_to_string(types_dir.join(index.to_string())) {
                Ok(s) if s.trim().eq_ignore_ascii_case("RoCE v2") => GidType::RoceV2,
                Ok(s) if s.trim().eq_ignore_ascii_case("IB/RoCE v1") => GidType::RoceV1,
                _ => GidType::Unknown,
            }
        };
        out.push(GidEntry {
            index,
            gid,
            gid_type,
        });
    }
    if out.is_empty() {
        return Err(TransportError::NoRdmaDevice {
            wanted: format!("populated GID on {name} port {port}"),
            found: Vec::new(),
            reason: format!("all {} GID table entries are empty", info.gid_tbl_len),
        });
    }
    Ok(out)
}

/// The automatic GID choice (see [`Context::open`]).
fn select_gid(table: &[GidEntry], link_layer: LinkLayer) -> Option<GidEntry> {
    if link_layer == LinkLayer::InfiniBand {
        return table
            .iter()
            .find(|e| e.index == 0)
            .or(table.first())
            .copied();
    }
    let rank = |e: &GidEntry| -> Option<u8> {
        if e.gid_type != GidType::RoceV2 {
            return None;
        }
        Some(match (e.gid.ipv4().is_some(), e.gid.is_link_local()) {
            (true, false) => 0,
            (false, false) => 1,
            (_, true) => 2,
        })
    };
    table
        .iter()
        .filter_map(|e| rank(e).map(|r| (r, e.index, *e)))
        .min_by_key(|&(r, i, _)| (r, i))
        .map(|(_, _, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u8, s: &str, gid_type: GidType) -> GidEntry {
        GidEntry {
            index,
            gid: Gid(s.parse::<Ipv6Addr>().unwrap().octets()),
            gid_type,
        }
    }

    #[test]
    fn gid_choice_prefers_routable_ipv4_mapped_roce_v2() {
        let t = [
            entry(0, "fe80::1", GidType::RoceV1),
            entry(1, "fe80::1", GidType::RoceV2),
            entry(2, "::ffff:169.254.1.1", GidType::RoceV2),
            entry(3, "2001:db8::1", GidType::RoceV2),
            entry(4, "::ffff:10.99.0.1", GidType::RoceV1),
            entry(5, "::ffff:10.99.0.1", GidType::RoceV2),
        ];
        assert_eq!(select_gid(&t, LinkLayer::Ethernet).unwrap().index, 5);
        assert_eq!(select_gid(&t[..5], LinkLayer::Ethernet).unwrap().index, 3);
        assert_eq!(select_gid(&t[..3], LinkLayer::Ethernet).unwrap().index, 1);
        assert_eq!(select_gid(&t[..1], LinkLayer::Ethernet), None);
        assert_eq!(select_gid(&t, LinkLayer::InfiniBand).unwrap().index, 0);
    }

    #[test]
    fn gid_link_local() {
        assert!(entry(0, "fe80::1", GidType::RoceV2).gid.is_link_local());
        assert!(entry(0, "::ffff:169.254.3.4", GidType::RoceV2)
            .gid
            .is_link_local());
        assert!(!entry(0, "::ffff:10.99.0.1", GidType::RoceV2)
            .gid
            .is_link_local());
        assert!(!entry(0, "2001:db8::1", GidType::RoceV2).gid.is_link_local());
    }
}
