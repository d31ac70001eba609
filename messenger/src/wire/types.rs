//! Entity types, names and addresses (`include/msgr.h`, `msg/msg_types.{h,cc}`).
//!
//! Addresses are always encoded the way Ceph encodes them for peers with
//! `CEPH_FEATURE_MSG_ADDR2` and `SERVER_NAUTILUS`, which msgr2 frames assume
//! (`msgr2_frame_assumed` in `frames_v2.h`):
//!
//! ```text
//! entity_addr_t:    u8 marker = 1
//!                   u8 struct_v = 1, u8 struct_compat = 1, u32 len   (ENCODE_START(1, 1))
//!                   u32 type, u32 nonce
//!                   u32 sockaddr_len, sockaddr bytes (Linux layout)
//! entity_addrvec_t: u8 marker = 2, u32 count, count * entity_addr_t
//! ```
//!
//! The sockaddr is Linux's `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes) with
//! `sa_family` in host (= little-endian) byte order and port and address in network byte
//! order. An address without a socket address (`AF_UNSPEC`) is written as 28 zero bytes,
//! as Ceph does (`get_sockaddr_len()` is then `sizeof(u)`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use super::codec::{Decode, Decoder, Encode, Encoder};
use super::error::{WireError, WireResult};

/// `CEPH_ENTITY_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum EntityType {
    Mon = 0x01,
    Mds = 0x02,
    Osd = 0x04,
    Client = 0x08,
    Mgr = 0x10,
    Auth = 0x20,
    Any = 0xFF,
}

impl EntityType {
    /// The name Ceph prints (`ceph_entity_type_name`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Mon => "mon",
            EntityType::Mds => "mds",
            EntityType::Osd => "osd",
            EntityType::Client => "client",
            EntityType::Mgr => "mgr",
            EntityType::Auth => "auth",
            EntityType::Any => "any",
        }
    }
}

impl TryFrom<u8> for EntityType {
    type Error = WireError;
    fn try_from(v: u8) -> WireResult<Self> {
        Ok(match v {
            0x01 => EntityType::Mon,
            0x02 => EntityType::Mds,
            0x04 => EntityType::Osd,
            0x08 => EntityType::Client,
            0x10 => EntityType::Mgr,
            0x20 => EntityType::Auth,
            0xFF => EntityType::Any,
            _ => {
                return Err(WireError::bad(
                    "entity type",
                    format!("unknown value {v:#x}"),
                ))
            }
        })
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Encode for EntityType {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u8(*self as u8);
    }
}
impl Decode for EntityType {
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        EntityType::try_from(dec.u8()?)
    }
}

/// `entity_name_t`: a type and a number, e.g. `osd.0`; encoded `u8 type, i64 num`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityName {
    pub ty: EntityType,
    pub num: i64,
}

impl EntityName {
    /// `entity_name_t::NEW`, a number not yet assigned.
    pub const NEW: i64 = -1;

    pub const fn new(ty: EntityType, num: i64) -> Self {
        Self { ty, num }
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num < 0 {
            write!(f, "{}.?", self.ty)
        } else {
            write!(f, "{}.{}", self.ty, self.num)
        }
    }
}

impl FromStr for EntityName {
    type Err = WireError;
    /// Parses `mon.N`, `osd.N`, `mds.N`, `client.N` and `mgr.N`, like `entity_name_t::parse`.
    fn from_str(s: &str) -> WireResult<Self> {
        let (ty, rest) = s
            .split_once('.')
            .ok_or_else(|| WireError::bad("entity name", format!("no '.' in {s:?}")))?;
        let ty = match ty {
            "mon" => EntityType::Mon,
            "osd" => EntityType::Osd,
            "mds" => EntityType::Mds,
            "client" => EntityType::Client,
            "mgr" => EntityType::Mgr,
            _ => {
                return Err(WireError::bad(
                    "entity name",
                    format!("unknown type in {s:?}"),
                ))
            }
        };
        let num = rest
            .parse::<i64>()
            .map_err(|e| WireError::bad("entity name", format!("{s:?}: {e}")))?;
        Ok(Self { ty, num })
    }
}

impl Encode for EntityName {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u8(self.ty as u8).put_i64(self.num);
    }
}
impl Decode for EntityName {
    const MIN_ENCODED_LEN: usize = 9;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        Ok(Self {
            ty: dec.get()?,
            num: dec.i64()?,
        })
    }
}

/// `entity_addr_t::type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityAddrType {
    None,
    /// msgr1.
    Legacy,
    /// msgr2.
    Msgr2,
    Any,
    /// A CIDR range (newer Ceph; the nonce holds the netmask).
    Cidr,
    /// A value this implementation does not know, kept as is.
    Other(u32),
}

impl EntityAddrType {
    pub fn as_u32(self) -> u32 {
        match self {
            EntityAddrType::None => 0,
            EntityAddrType::Legacy => 1,
            EntityAddrType::Msgr2 => 2,
            EntityAddrType::Any => 3,
            EntityAddrType::Cidr => 4,
            EntityAddrType::Other(v) => v,
        }
    }

    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => EntityAddrType::None,
            1 => EntityAddrType::Legacy,
            2 => EntityAddrType::Msgr2,
            3 => EntityAddrType::Any,
            4 => EntityAddrType::Cidr,
            v => EntityAddrType::Other(v),
        }
    }
}

/// Linux address family numbers as they appear on the wire.
const AF_UNSPEC: u16 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `sizeof(sockaddr_in)`, `sizeof(sockaddr_in6)` and `sizeof(entity_addr_t::u)` on Linux.
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;
const SOCKADDR_UNION_LEN: usize = 28;
/// `sizeof(sockaddr_storage)`, used by the legacy (marker 0) encoding.
const SOCKADDR_STORAGE_LEN: usize = 128;

/// `entity_addr_t`: address type, nonce and an optional IPv4/IPv6 socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntityAddr {
    pub ty: EntityAddrType,
    pub nonce: u32,
    /// `None` for `AF_UNSPEC` (a blank address).
    pub addr: Option<SocketAddr>,
}

impl Default for EntityAddr {
    fn default() -> Self {
        Self {
            ty: EntityAddrType::None,
            nonce: 0,
            addr: None,
        }
    }
}

impl EntityAddr {
    pub const fn new(ty: EntityAddrType, addr: SocketAddr, nonce: u32) -> Self {
        Self {
            ty,
            nonce,
            addr: Some(addr),
        }
    }

    /// A msgr2 (`v2:`) address.
    pub const fn msgr2(addr: SocketAddr, nonce: u32) -> Self {
        Self::new(EntityAddrType::Msgr2, addr, nonce)
    }

    /// The Linux sockaddr bytes Ceph puts on the wire.
    pub fn sockaddr_bytes(&self) -> Vec<u8> {
        match self.addr {
            None => vec![0; SOCKADDR_UNION_LEN],
            Some(SocketAddr::V4(a)) => {
                let mut b = Vec::with_capacity(SOCKADDR_IN_LEN);
                b.extend_from_slice(&AF_INET.to_le_bytes());
                b.extend_from_slice(&a.port().to_be_bytes());
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&[0; 8]);
                b
            }
            Some(SocketAddr::V6(a)) => {
                let mut b = Vec::with_capacity(SOCKADDR_IN6_LEN);
                b.extend_from_slice(&AF_INET6.to_le_bytes());
                b.extend_from_slice(&a.port().to_be_bytes());
                b.extend_from_slice(&a.flowinfo().to_be_bytes());
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.scope_id().to_le_bytes());
                b
            }
        }
    }

    /// Parses sockaddr bytes whose family is `family`; `data` is what follows the family,
    /// zero-padded to the family's length (as Ceph copies a short sockaddr into a zeroed one).
    fn sockaddr_from(family: u16, data: &[u8]) -> WireResult<Option<SocketAddr>> {
        let mut u = [0u8; SOCKADDR_STORAGE_LEN];
        let n = data.len().min(u.len());
        u[..n].copy_from_slice(&data[..n]);
        let port = u16::from_be_bytes([u[0], u[1]]);
        Ok(match family {
            AF_UNSPEC => None,
            AF_INET => {
                let ip = Ipv4Addr::new(u[2], u[3], u[4], u[5]);
                Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            AF_INET6 => {
                let flow = u32::from_be_bytes([u[2], u[3], u[4], u[5]]);
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&u[6..22]);
                let scope = u32::from_le_bytes([u[22], u[23], u[24], u[25]]);
                let ip = Ipv6Addr::from(ip);
                Some(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
            }
            f => {
                return Err(WireError::bad(
                    "entity_addr_t",
                    format!("unsupported address family {f}"),
                ))
            }
        })
    }

    /// Decodes what follows the `u8` marker 1: the `ENCODE_START(1, 1)` body.
    fn decode_after_marker1(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.decode_versioned("entity_addr_t", 1, |_, d| {
            let ty = EntityAddrType::from_u32(d.u32()?);
            let nonce = d.u32()?;
            let elen = d.u32()? as usize;
            let mut addr = None;
            if elen > 0 {
                if elen < 2 {
                    return Err(WireError::bad(
                        "entity_addr_t",
                        "sockaddr shorter than family",
                    ));
                }
                let family = d.u16()?;
                let max = match family {
                    AF_INET => SOCKADDR_IN_LEN,
                    AF_INET6 => SOCKADDR_IN6_LEN,
                    _ => SOCKADDR_UNION_LEN,
                };
                if elen > max {
                    return Err(WireError::bad(
                        "entity_addr_t",
                        format!("sockaddr length {elen} exceeds {max} for family {family}"),
                    ));
                }
                let data = d.take(elen - 2, "entity_addr_t sockaddr")?;
                addr = Self::sockaddr_from(family, data)?;
            }
            Ok(Self { ty, nonce, addr })
        })
    }

    /// Decodes the legacy encoding after its first byte (marker 0):
    /// the rest of `u32 type = 0`, `u32 nonce`, `sockaddr_storage` with a big-endian family.
    fn decode_legacy_after_marker(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.skip(3, "legacy entity_addr_t type")?;
        let nonce = dec.u32()?;
        let ss = dec.take(SOCKADDR_STORAGE_LEN, "legacy sockaddr_storage")?;
        let family = u16::from_be_bytes([ss[0], ss[1]]);
        let addr = match family {
            AF_UNSPEC | AF_INET | AF_INET6 => Self::sockaddr_from(family, &ss[2..])?,
            _ => None, // set_sockaddr() rejects it and leaves the address blank
        };
        let ty = if addr.is_none() {
            EntityAddrType::None
        } else {
            EntityAddrType::Legacy
        };
        Ok(Self { ty, nonce, addr })
    }
}

impl Encode for EntityAddr {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u8(1);
        enc.encode_versioned(1, 1, |e| {
            let sa = self.sockaddr_bytes();
            e.put_u32(self.ty.as_u32())
                .put_u32(self.nonce)
                .put_u32(sa.len() as u32)
                .put_raw(&sa);
        });
    }
}

impl Decode for EntityAddr {
    const MIN_ENCODED_LEN: usize = 7;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        match dec.u8()? {
            0 => Self::decode_legacy_after_marker(dec),
            1 => Self::decode_after_marker1(dec),
            m => Err(WireError::bad("entity_addr_t", format!("marker {m} != 1"))),
        }
    }
}

impl fmt::Display for EntityAddr {
    /// Like Ceph: `-` for a none-type address, else `v1:`/`v2:` (nothing for `any`),
    /// the socket address and `/nonce`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.ty {
            EntityAddrType::None => return f.write_str("-"),
            EntityAddrType::Legacy => "v1:",
            EntityAddrType::Msgr2 => "v2:",
            EntityAddrType::Any => "",
            EntityAddrType::Cidr => "cidr:",
            EntityAddrType::Other(_) => "???:",
        };
        match self.addr {
            Some(a) => write!(f, "{prefix}{a}/{}", self.nonce),
            None => write!(f, "{prefix}(unspec)/{}", self.nonce),
        }
    }
}

impl FromStr for EntityAddr {
    type Err = WireError;
    /// Parses `[v1:|v2:|any:]IP[:PORT][/NONCE]` (IPv6 in brackets when a port follows);
    /// without a prefix the type is msgr2, as `entity_addr_t::TYPE_DEFAULT`.
    fn from_str(s: &str) -> WireResult<Self> {
        let bad = |d: &str| WireError::bad("entity address", format!("{s:?}: {d}"));
        if s == "-" {
            return Ok(Self::default());
        }
        let (ty, rest) = if let Some(r) = s.strip_prefix("v1:") {
            (EntityAddrType::Legacy, r)
        } else if let Some(r) = s.strip_prefix("v2:") {
            (EntityAddrType::Msgr2, r)
        } else if let Some(r) = s.strip_prefix("any:") {
            (EntityAddrType::Any, r)
        } else {
            (EntityAddrType::Msgr2, s)
        };
        let (sock, nonce) = match rest.rsplit_once('/') {
            Some((a, n)) => (a, n.parse::<u32>().map_err(|e| bad(&e.to_string()))?),
            None => (rest, 0),
        };
        let addr = match sock.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let ip = sock.trim_start_matches('[').trim_end_matches(']');
                let ip = ip.parse::<IpAddr>().map_err(|e| bad(&e.to_string()))?;
                SocketAddr::new(ip, 0)
            }
        };
        Ok(Self::new(ty, addr, nonce))
    }
}

/// `entity_addrvec_t`: the addresses of one entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EntityAddrVec {
    pub addrs: Vec<EntityAddr>,
}

impl EntityAddrVec {
    pub fn new(addrs: Vec<EntityAddr>) -> Self {
        Self { addrs }
    }

    /// The first address of type msgr2, if any.
    pub fn msgr2_addr(&self) -> Option<&EntityAddr> {
        self.addrs.iter().find(|a| a.ty == EntityAddrType::Msgr2)
    }

    /// The first address, if any.
    pub fn front(&self) -> Option<&EntityAddr> {
        self.addrs.first()
    }
}

impl From<EntityAddr> for EntityAddrVec {
    fn from(a: EntityAddr) -> Self {
        Self { addrs: vec![a] }
    }
}

impl Encode for EntityAddrVec {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u8(2).put_seq(self.addrs.iter());
    }
}

impl Decode for EntityAddrVec {
    const MIN_ENCODED_LEN: usize = 5;
    /// Accepts marker 2 (a vector), and like Ceph marker 1 (one address) and 0 (legacy).
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        let addrs = match dec.u8()? {
            0 => vec![EntityAddr::decode_legacy_after_marker(dec)?],
            1 => vec![EntityAddr::decode_after_marker1(dec)?],
            2 => dec.vec()?,
            m => {
                return Err(WireError::bad(
                    "entity_addrvec_t",
                    format!("marker {m} > 2"),
                ))
            }
        };
        Ok(Self { addrs })
    }
}

impl fmt::Display for EntityAddrVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addrs.as_slice() {
            [] => Ok(()),
            [a] => write!(f, "{a}"),
            many => {
                f.write_str("[")?;
                for (i, a) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
}
