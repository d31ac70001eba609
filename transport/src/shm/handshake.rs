//! The connection handshake over the Unix socket (versioned, fixed-size, length-checked).
//!
//! Every message is exactly [`MSG_LEN`] (64) bytes, little endian:
//!
//! | bytes | field |
//! |------:|-------|
//! | 0..8 | magic `"CWSHMHS\0"` |
//! | 8..10 | version ([`HS_VERSION`]) |
//! | 10..12 | type: 1 `HELLO`, 2 `OFFER`, 3 `ACK`, 4 `NAK` |
//! | 12..16 | `OFFER`: flags (bit 0: huge pages); `NAK`: reason code; else 0 |
//! | 16..24 | `HELLO`: largest region the connector accepts; `OFFER`: region length |
//! | 24..32 | `OFFER`: ring capacity |
//! | 32..40 | `OFFER`: buffer-area length |
//! | rest | zero |
//!
//! 1. connector → acceptor: `HELLO`;
//! 2. acceptor creates and initialises the region ([`crate::shm::layout`]) and sends `OFFER`
//!    with the region's memfd attached (`SCM_RIGHTS`);
//! 3. connector validates the layout against its limits, requires exactly one fd, maps it
//!    with [`ShmRegion::from_fd`] (regular sealed memfd of exactly the offered size), checks
//!    the control page and ring headers, and answers `ACK` (or `NAK` and closes).
//!
//! Unknown versions, types, flags or non-zero reserved bytes are [`TransportError::Malformed`];
//! a hang-up mid-handshake is [`TransportError::Reset`]. The caller bounds the whole exchange
//! with a timeout. The socket then stays open for wake-ups and liveness.

use std::os::fd::{AsRawFd, OwnedFd};

use corewire_runtime::net::UnixStream;

use crate::addr::Address;
use crate::error::TransportError;
use crate::shm::layout::{Layout, Mapped};
use crate::shm::region::ShmRegion;

/// Handshake magic.
pub const HS_MAGIC: [u8; 8] = *b"CWSHMHS\0";
/// Handshake version.
pub const HS_VERSION: u16 = 1;
/// Length of every handshake message.
pub const MSG_LEN: usize = 64;

const T_HELLO: u16 = 1;
const T_OFFER: u16 = 2;
const T_ACK: u16 = 3;
const T_NAK: u16 = 4;
const FLAG_HUGE: u32 = 1;

/// `NAK` code: the offer failed validation.
pub const NAK_INVALID: u32 = 1;

/// A handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Connector's greeting with its largest acceptable region.
    Hello { max_region_len: u64 },
    /// Acceptor's region layout (the memfd rides along).
    Offer { layout: Layout, huge: bool },
    /// Connector mapped the region.
    Ack,
    /// Connector rejected the offer.
    Nak { code: u32 },
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
fn get64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[..8].copy_from_slice(&HS_MAGIC);
        put16(&mut b, 8, HS_VERSION);
        match *self {
            Msg::Hello { max_region_len } => {
                put16(&mut b, 10, T_HELLO);
                put64(&mut b, 16, max_region_len);
            }
            Msg::Offer { layout, huge } => {
                put16(&mut b, 10, T_OFFER);
                put32(&mut b, 12, if huge { FLAG_HUGE } else { 0 });
                put64(&mut b, 16, layout.region_len as u64);
                put64(&mut b, 24, layout.ring_capacity as u64);
                put64(&mut b, 32, layout.area_len as u64);
            }
            Msg::Ack => put16(&mut b, 10, T_ACK),
            Msg::Nak { code } => {
                put16(&mut b, 10, T_NAK);
                put32(&mut b, 12, code);
            }
        }
        b
    }

    /// Decodes and validates the framing (not the layout's limits).
    pub fn decode(b: &[u8]) -> Result<Msg, String> {
        if b.len() != MSG_LEN {
            return Err(format!(
                "handshake message of {} bytes, expected {MSG_LEN}",
                b.len()
            ));
        }
        if b[..8] != HS_MAGIC {
            return Err(format!("bad handshake magic {:02x?}", &b[..8]));
        }
        let version = get16(b, 8);
        if version != HS_VERSION {
            return Err(format!(
                "handshake version {version}, this side speaks {HS_VERSION}"
            ));
        }
        let ty = get16(b, 10);
        let word = get32(b, 12);
        let (msg, used) = match ty {
            T_HELLO => (
                Msg::Hello {
                    max_region_len: get64(b, 16),
                },
                24,
            ),
            T_OFFER => {
                if word & !FLAG_HUGE != 0 {
                    return Err(format!("unknown OFFER flags {word:#x}"));
                }
                let field = |at: usize, what: &str| -> Result<usize, String> {
                    usize::try_from(get64(b, at)).map_err(|_| format!("{what} out of range"))
                };
                let layout = Layout {
                    region_len: field(16, "region length")?,
                    ring_capacity: field(24, "ring capacity")?,
                    area_len: field(32, "area length")?,
                };
                (
                    Msg::Offer {
                        layout,
                        huge: word & FLAG_HUGE != 0,
                    },
                    40,
                )
            }
            T_ACK => (Msg::Ack, 12),
            T_NAK => (Msg::Nak { code: word }, 16),
            other => return Err(format!("unknown handshake message type {other}")),
        };
        if matches!(msg, Msg::Hello { .. }) && word != 0 {
            return Err(format!("non-zero reserved word {word:#x}"));
        }
        if b[used..].iter().any(|&x| x != 0) {
            return Err("non-zero reserved bytes".into());
        }
        Ok(msg)
    }
}

fn malformed(peer: &Address, what: impl Into<String>) -> TransportError {
    TransportError::Malformed {
        peer: peer.clone(),
        what: what.into(),
    }
}

/// Reads exactly one message (and any fds passed with it).
async fn read_msg(
    s: &UnixStream,
    peer: &Address,
    expect: &'static str,
    with_fds: bool,
) -> Result<(Msg, Vec<OwnedFd>), TransportError> {
    let mut got: Vec<u8> = Vec::with_capacity(MSG_LEN);
    let mut fds = Vec::new();
    while got.len() < MSG_LEN {
        // Exactly the missing length, so nothing after the message is consumed.
        let buf = Vec::with_capacity(MSG_LEN - got.len());
        let (r, buf) = if with_fds {
            let (r, buf) = s.recv_with_fds(buf).await;
            (
                r.map(|(n, mut f)| {
                    fds.append(&mut f);
                    n
                }),
                buf,
            )
        } else {
            s.read(buf).await
        };
        match r {
            Ok(0) => {
                return Err(TransportError::Reset {
                    peer: peer.clone(),
                    reason: format!(
                        "peer hung up during the shm handshake ({} of {MSG_LEN} bytes of {expect})",
                        got.len()
                    ),
                })
            }
            Ok(_) => got.extend_from_slice(&buf[..buf.len().min(MSG_LEN - got.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(malformed(peer, format!("{expect}: {e}")))
            }
            Err(e) => return Err(TransportError::from_io(peer, "shm handshake", e)),
        }
    }
    let msg = Msg::decode(&got).map_err(|e| malformed(peer, format!("{expect}: {e}")))?;
    Ok((msg, fds))
}

async fn write_msg(s: &UnixStream, peer: &Address, msg: Msg) -> Result<(), TransportError> {
    let (r, _) = s.write_all(msg.encode().to_vec()).await;
    r.map_err(|e| TransportError::from_io(peer, "shm handshake", e))
}

/// What the acceptor offers.
#[derive(Debug, Clone)]
pub(crate) struct OfferSpec {
    pub(crate) ring_capacity: usize,
    pub(crate) area_len: usize,
    pub(crate) huge: bool,
    pub(crate) region_name: String,
}

/// Acceptor side. Returns the mapped region once the connector acknowledged it.
pub(crate) async fn accept_side(
    s: &UnixStream,
    peer: &Address,
    spec: &OfferSpec,
) -> Result<Mapped, TransportError> {
    let (hello, _) = read_msg(s, peer, "HELLO", false).await?;
    let Msg::Hello { max_region_len } = hello else {
        return Err(malformed(peer, format!("expected HELLO, got {hello:?}")));
    };
    let unavailable = |what: String| TransportError::Unavailable { what };
    let mut huge = spec.huge && !crate::shm::stack::huge_pages_failed();
    let mut layout = Layout::new(spec.ring_capacity, spec.area_len, huge).map_err(unavailable)?;
    if huge && layout.region_len as u64 > max_region_len {
        huge = false;
        layout = Layout::new(spec.ring_capacity, spec.area_len, false).map_err(unavailable)?;
    }
    if layout.region_len as u64 > max_region_len {
        return Err(malformed(
            peer,
            format!(
                "peer accepts regions of at most {max_region_len} bytes, the layout needs {}",
                layout.region_len
            ),
        ));
    }
    let region = ShmRegion::create(&spec.region_name, layout.region_len, huge)
        .map_err(|e| unavailable(format!("creating the shm region: {e}")))?;
    if huge && !region.is_huge() {
        crate::shm::stack::note_huge_pages_failed();
    }
    let huge = region.is_huge();
    let mapped = Mapped::init(region, layout)
        .map_err(|e| unavailable(format!("initialising the shm region: {e}")))?;
    let offer = Msg::Offer { layout, huge }.encode().to_vec();
    let fd = mapped.region().fd().as_raw_fd();
    let (r, buf) = s.send_with_fds(offer, &[fd]).await;
    let sent = r.map_err(|e| TransportError::from_io(peer, "shm handshake", e))?;
    if sent < MSG_LEN {
        let (r, _) = s.write_all(buf[sent..].to_vec()).await;
        r.map_err(|e| TransportError::from_io(peer, "shm handshake", e))?;
    }
    let (ack, _) = read_msg(s, peer, "ACK", false).await?;
    match ack {
        Msg::Ack => Ok(mapped),
        Msg::Nak { code } => Err(malformed(
            peer,
            format!("peer rejected the shm region (code {code})"),
        )),
        other => Err(malformed(peer, format!("expected ACK, got {other:?}"))),
    }
}

/// The connector's limits on what it maps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_ring_capacity: usize,
    pub(crate) max_area_len: usize,
    pub(crate) max_region_len: usize,
}

/// Connector side. Returns the mapped region after acknowledging it.
pub(crate) async fn connect_side(
    s: &UnixStream,
    peer: &Address,
    limits: &Limits,
) -> Result<Mapped, TransportError> {
    write_msg(
        s,
        peer,
        Msg::Hello {
            max_region_len: limits.max_region_len as u64,
        },
    )
    .await?;
    let (offer, mut fds) = read_msg(s, peer, "OFFER", true).await?;
    let checked = (|| -> Result<Mapped, String> {
        let Msg::Offer { layout, .. } = offer else {
            return Err(format!("expected OFFER, got {offer:?}"));
        };
        layout.validate(
            limits.max_ring_capacity,
            limits.max_area_len,
            limits.max_region_len,
        )?;
        if fds.len() != 1 {
            return Err(format!("OFFER carried {} fds, expected 1", fds.len()));
        }
        let fd = fds.pop().ok_or("no fd")?;
        let region = ShmRegion::from_fd(fd, layout.region_len)
            .map_err(|e| format!("shm fd rejected: {e}"))?;
        Mapped::attach(region, layout).map_err(|e| e.to_string())
    })();
    match checked {
        Ok(mapped) => {
            write_msg(s, peer, Msg::Ack).await?;
            Ok(mapped)
        }
        Err(what) => {
            let _ = write_msg(s, peer, Msg::Nak { code: NAK_INVALID }).await;
            Err(malformed(peer, what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let layout = Layout::new(1 << 16, 1 << 20, false).unwrap();
        for m in [
            Msg::Hello { max_region_len: 99 },
            Msg::Offer { layout, huge: true },
            Msg::Ack,
            Msg::Nak { code: 7 },
        ] {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
        let good = Msg::Ack.encode();
        assert!(Msg::decode(&good[..63]).is_err());
        let mut b = good;
        b[0] ^= 1;
        assert!(Msg::decode(&b).unwrap_err().contains("magic"));
        let mut b = good;
        b[8] = 9;
        assert!(Msg::decode(&b).unwrap_err().contains("version"));
        let mut b = good;
        b[10] = 77;
        assert!(Msg::decode(&b).unwrap_err().contains("type"));
        let mut b = good;
        b[63] = 1;
        assert!(Msg::decode(&b).unwrap_err().contains("reserved"));
        let mut b = good;
        b[12] = 1;
        assert!(Msg::decode(&b).unwrap_err().contains("reserved"));
        let mut b = Msg::Offer {
            layout,
            huge: false,
        }
        .encode();
        b[12] = 2;
        assert!(Msg::decode(&b).unwrap_err().contains("flags"));
    }
}
