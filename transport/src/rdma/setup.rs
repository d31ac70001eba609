//! The connection setup message exchanged over the TCP side channel.
//!
//! Both sides send one [`SetupMsg`] right after the TCP connection is up, read the peer's,
//! connect their queue pair to it, post their receives and then send one [`READY`] byte; a
//! side starts sending only after it has read the peer's `READY` (so no SEND reaches a QP
//! that is not in RTR yet or has no receive posted). After that the side channel carries only
//! hand-off messages ([`MoveMsg`], see [`crate::rdma::handoff`]): end of file or an error on
//! it means the peer closed or died.
//!
//! Wire format (little endian, fixed length, [`SetupMsg::WIRE_LEN`] bytes):
//!
//! ```text
//! magic "CWRD" | version u16 | body_len u16 | QpEndpoint (28) | credits u16 | flags u16 | buf_size u32
//! ```
//!
//! Flags: bit 0 [`FLAG_ZC`] (the side advertises zero-copy receive buffers); any other bit
//! set is rejected.

use crate::rdma::verbs::QpEndpoint;

/// `CWRD`.
pub(crate) const MAGIC: [u8; 4] = *b"CWRD";
/// The only version spoken.
pub(crate) const VERSION: u16 = 1;
/// The byte each side sends once its QP is connected and its receives are posted.
pub(crate) const READY: u8 = b'R';
/// Bounds a peer's advertised values must respect.
pub(crate) const MAX_CREDITS: u16 = 4096;
pub(crate) const MIN_BUF: u32 = 256;
pub(crate) const MAX_BUF: u32 = 16 << 20;

/// One side's connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetupMsg {
    /// QPN, PSN, GID, LID and path MTU (the port's active MTU).
    pub qp: QpEndpoint,
    /// Receive buffers posted for the peer (the peer's initial send credits).
    pub credits: u16,
    /// Size of each receive buffer: the largest SEND the peer may post.
    pub buf_size: u32,
    /// Flag [`FLAG_ZC`]: this side advertises zero-copy receive buffers
    /// ([`crate::rdma::zerocopy`]).
    pub zc: bool,
}

/// Setup flag: the sender advertises receive buffers for RDMA WRITE.
pub(crate) const FLAG_ZC: u16 = 1;

const HDR: usize = 8;
const BODY: usize = QpEndpoint::WIRE_LEN + 8;

impl SetupMsg {
    pub const WIRE_LEN: usize = HDR + BODY;

    pub fn encode(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(BODY as u16).to_le_bytes());
        let q = HDR + QpEndpoint::WIRE_LEN;
        b[HDR..q].copy_from_slice(&self.qp.encode());
        b[q..q + 2].copy_from_slice(&self.credits.to_le_bytes());
        let flags = if self.zc { FLAG_ZC } else { 0 };
        b[q + 2..q + 4].copy_from_slice(&flags.to_le_bytes());
        b[q + 4..q + 8].copy_from_slice(&self.buf_size.to_le_bytes());
        b
    }

    /// Decodes and validates a peer's message; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<SetupMsg, String> {
        if b.len() != Self::WIRE_LEN {
            return Err(format!(
                "rdma setup message of {} bytes, expected {}",
                b.len(),
                Self::WIRE_LEN
            ));
        }
        if b[..4] != MAGIC {
            return Err(format!("rdma setup: bad magic {:02x?}", &b[..4]));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(format!(
                "rdma setup: version {version}, this side speaks {VERSION}"
            ));
        }
        let body = u16::from_le_bytes([b[6], b[7]]);
        if usize::from(body) != BODY {
            return Err(format!("rdma setup: body length {body}, expected {BODY}"));
        }
        let q = HDR + QpEndpoint::WIRE_LEN;
        let qp = QpEndpoint::decode(&b[HDR..q])
            .ok_or_else(|| "rdma setup: undecodable queue pair endpoint (MTU?)".to_string())?;
        let credits = u16::from_le_bytes([b[q], b[q + 1]]);
        let flags = u16::from_le_bytes([b[q + 2], b[q + 3]]);
        let buf_size = u32::from_le_bytes([b[q + 4], b[q + 5], b[q + 6], b[q + 7]]);
        if flags & !FLAG_ZC != 0 {
            return Err(format!("rdma setup: unknown flags {flags:#x}"));
        }
        if !(2..=MAX_CREDITS).contains(&credits) {
            return Err(format!(
                "rdma setup: {credits} receive credits (2..={MAX_CREDITS})"
            ));
        }
        if !(MIN_BUF..=MAX_BUF).contains(&buf_size) {
            return Err(format!(
                "rdma setup: receive buffer size {buf_size} ({MIN_BUF}..={MAX_BUF})"
            ));
        }
        if qp.qpn == 0 || qp.qpn > 0xff_ffff {
            return Err(format!("rdma setup: invalid QPN {:#x}", qp.qpn));
        }
        Ok(SetupMsg {
            qp,
            credits,
            buf_size,
            zc: flags & FLAG_ZC != 0,
        })
    }
}

/// `CWMV`: a side that moved to another core announces its new queue pair.
pub(crate) const MOVE_MAGIC: [u8; 4] = *b"CWMV";
/// `CWMD`: the peer's answer to a [`MoveMsg`] of kind `Move`.
pub(crate) const MOVED_MAGIC: [u8; 4] = *b"CWMD";
/// Status of a `Moved` answer: the peer connected its new queue pair.
pub(crate) const MOVE_OK: u16 = 0;
/// Status of a `Moved` answer: the loss check failed; both sides reset.
pub(crate) const MOVE_LOST: u16 = 1;

/// A hand-off message on the side channel (see [`crate::rdma::handoff`]): `Move` from the
/// side that moved, `Moved` back from its peer.
///
/// Wire format (little endian, fixed length, [`MoveMsg::WIRE_LEN`] bytes):
///
/// ```text
/// magic "CWMV"/"CWMD" | version u16 | body_len u16 | QpEndpoint (28) | credits u16 |
/// status u16 | buf_size u32 | data_sent u64 | data_received u64
/// ```
///
/// `data_sent` / `data_received` count the data (and end-of-stream) messages sent / received
/// on the old queue pair, credit-only messages excluded: the loss check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoveMsg {
    /// `true`: `Moved` (the answer); `false`: `Move`.
    pub answer: bool,
    pub qp: QpEndpoint,
    /// Receive buffers posted on the new queue pair (may be fewer than at setup: buffers
    /// holding data not yet returned by `recv` are reposted later and returned as credits).
    pub credits: u16,
    /// [`MOVE_OK`] or [`MOVE_LOST`]; always `MOVE_OK` in a `Move`.
    pub status: u16,
    pub buf_size: u32,
    pub data_sent: u64,
    pub data_received: u64,
}

const MOVE_BODY: usize = QpEndpoint::WIRE_LEN + 24;

impl MoveMsg {
    pub const WIRE_LEN: usize = HDR + MOVE_BODY;
    /// The fixed header every side-channel message after setup starts with.
    pub const HDR_LEN: usize = HDR;

    pub fn encode(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[..4].copy_from_slice(if self.answer {
            &MOVED_MAGIC
        } else {
            &MOVE_MAGIC
        });
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(MOVE_BODY as u16).to_le_bytes());
        let q = HDR + QpEndpoint::WIRE_LEN;
        b[HDR..q].copy_from_slice(&self.qp.encode());
        b[q..q + 2].copy_from_slice(&self.credits.to_le_bytes());
        b[q + 2..q + 4].copy_from_slice(&self.status.to_le_bytes());
        b[q + 4..q + 8].copy_from_slice(&self.buf_size.to_le_bytes());
        b[q + 8..q + 16].copy_from_slice(&self.data_sent.to_le_bytes());
        b[q + 16..q + 24].copy_from_slice(&self.data_received.to_le_bytes());
        b
    }

    /// Decodes and validates a peer's message; `answer` says which kind is expected. The
    /// error says what is wrong.
    pub fn decode(b: &[u8], answer: bool) -> Result<MoveMsg, String> {
        let kind = if answer { "MOVED" } else { "MOVE" };
        if b.len() != Self::WIRE_LEN {
            return Err(format!(
                "rdma {kind} message of {} bytes, expected {}",
                b.len(),
                Self::WIRE_LEN
            ));
        }
        let magic = if answer { MOVED_MAGIC } else { MOVE_MAGIC };
        if b[..4] != magic {
            return Err(format!("rdma {kind}: bad magic {:02x?}", &b[..4]));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(format!(
                "rdma {kind}: version {version}, this side speaks {VERSION}"
            ));
        }
        let body = u16::from_le_bytes([b[6], b[7]]);
        if usize::from(body) != MOVE_BODY {
            return Err(format!(
                "rdma {kind}: body length {body}, expected {MOVE_BODY}"
            ));
        }
        let q = HDR + QpEndpoint::WIRE_LEN;
        let qp = QpEndpoint::decode(&b[HDR..q])
            .ok_or_else(|| format!("rdma {kind}: undecodable queue pair endpoint (MTU?)"))?;
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let m = MoveMsg {
            answer,
            qp,
            credits: u16::from_le_bytes([b[q], b[q + 1]]),
            status: u16::from_le_bytes([b[q + 2], b[q + 3]]),
            buf_size: u32::from_le_bytes([b[q + 4], b[q + 5], b[q + 6], b[q + 7]]),
            data_sent: u64_at(q + 8),
            data_received: u64_at(q + 16),
        };
        let statuses: &[u16] = if answer {
            &[MOVE_OK, MOVE_LOST]
        } else {
            &[MOVE_OK]
        };
        if !statuses.contains(&m.status) {
            return Err(format!("rdma {kind}: unknown status {:#x}", m.status));
        }
        if m.credits > MAX_CREDITS {
            return Err(format!(
                "rdma {kind}: {} receive credits (0..={MAX_CREDITS})",
                m.credits
            ));
        }
        if !(MIN_BUF..=MAX_BUF).contains(&m.buf_size) {
            return Err(format!(
                "rdma {kind}: receive buffer size {} ({MIN_BUF}..={MAX_BUF})",
                m.buf_size
            ));
        }
        if m.qp.qpn == 0 || m.qp.qpn > 0xff_ffff {
            return Err(format!("rdma {kind}: invalid QPN {:#x}", m.qp.qpn));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::verbs::{Gid, Mtu};

    fn msg() -> SetupMsg {
        SetupMsg {
            qp: QpEndpoint {
                qpn: 0x11,
                psn: 0x12_3456,
                gid: Gid([7; 16]),
                lid: 0,
                mtu: Mtu::M1024,
            },
            credits: 16,
            buf_size: 16 << 10,
            zc: true,
        }
    }

    #[test]
    fn round_trips() {
        let m = msg();
        assert_eq!(SetupMsg::decode(&m.encode()), Ok(m));
        let m = SetupMsg { zc: false, ..m };
        assert_eq!(SetupMsg::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn rejects_malformed() {
        let good = msg().encode();
        assert!(SetupMsg::decode(&good[..SetupMsg::WIRE_LEN - 1]).is_err());
        let mut cases = Vec::new();
        let mut b = good;
        b[0] = b'X';
        cases.push(("magic", b));
        let mut b = good;
        b[4] = 2;
        cases.push(("version", b));
        let mut b = good;
        b[6] = 3;
        cases.push(("body length", b));
        let q = HDR + QpEndpoint::WIRE_LEN;
        let mut b = good;
        b[q..q + 2].copy_from_slice(&0u16.to_le_bytes());
        cases.push(("credits", b));
        let mut b = good;
        b[q + 2] = 2;
        cases.push(("flags", b));
        let mut b = good;
        b[q + 4..q + 8].copy_from_slice(&1u32.to_le_bytes());
        cases.push(("buffer size", b));
        let mut b = good;
        b[HDR..HDR + 4].copy_from_slice(&0u32.to_le_bytes());
        cases.push(("QPN", b));
        for (what, b) in cases {
            let e = SetupMsg::decode(&b).expect_err(what);
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    fn move_msg() -> MoveMsg {
        MoveMsg {
            answer: false,
            qp: msg().qp,
            credits: 16,
            status: MOVE_OK,
            buf_size: 16 << 10,
            data_sent: 7,
            data_received: 1 << 40,
        }
    }

    #[test]
    fn move_round_trips() {
        let m = move_msg();
        assert_eq!(MoveMsg::decode(&m.encode(), false), Ok(m));
        let a = MoveMsg {
            answer: true,
            status: MOVE_LOST,
            credits: 0,
            ..m
        };
        assert_eq!(MoveMsg::decode(&a.encode(), true), Ok(a));
        // A MOVE is not a MOVED, and a MOVE never carries a loss status.
        assert!(MoveMsg::decode(&m.encode(), true).is_err());
        let lost = MoveMsg {
            status: MOVE_LOST,
            ..m
        };
        assert!(MoveMsg::decode(&lost.encode(), false).is_err());
    }

    #[test]
    fn move_rejects_malformed() {
        let good = move_msg().encode();
        assert!(MoveMsg::decode(&good[..MoveMsg::WIRE_LEN - 1], false).is_err());
        let q = HDR + QpEndpoint::WIRE_LEN;
        let mut cases = Vec::new();
        let mut b = good;
        b[1] = b'X';
        cases.push(("magic", b));
        let mut b = good;
        b[4] = 9;
        cases.push(("version", b));
        let mut b = good;
        b[6] = 1;
        cases.push(("body length", b));
        let mut b = good;
        b[q..q + 2].copy_from_slice(&5000u16.to_le_bytes());
        cases.push(("credits", b));
        let mut b = good;
        b[q + 2] = 3;
        cases.push(("status", b));
        let mut b = good;
        b[q + 4..q + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        cases.push(("buffer size", b));
        let mut b = good;
        b[HDR..HDR + 4].copy_from_slice(&0u32.to_le_bytes());
        cases.push(("QPN", b));
        for (what, b) in cases {
            let e = MoveMsg::decode(&b, false).expect_err(what);
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
