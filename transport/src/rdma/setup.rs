//! The connection setup message exchanged over the TCP side channel.
//!
//! Both sides send one [`SetupMsg`] right after the TCP connection is up, read the peer's,
//! connect their queue pair to it, post their receives and then send one [`READY`] byte; a
//! side starts sending only after it has read the peer's `READY` (so no SEND reaches a QP
//! that is not in RTR yet or has no receive posted). After that the side channel carries
//! nothing: end of file or an error on it means the peer closed or died.
//!
//! Wire format (little endian, fixed length, [`SetupMsg::WIRE_LEN`] bytes):
//!
//! ```text
//! magic "CWRD" | version u16 | body_len u16 | QpEndpoint (28) | credits u16 | flags u16 | buf_size u32
//! ```

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
}

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
        // q+2..q+4: flags, zero in version 1.
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
        if flags != 0 {
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
        })
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
        }
    }

    #[test]
    fn round_trips() {
        let m = msg();
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
        b[q + 2] = 1;
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
}
