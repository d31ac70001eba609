//! Zero-copy large payloads: RDMA WRITE WITH IMM straight from the sender's registered pool
//! into receive buffers the receiver advertised (control path: advertisements, slab returns,
//! hand-off; the posting itself is in [`crate::rdma::pump`]).
//!
//! # Protocol
//! - **Capability.** The setup message's flag `ZC` ([`crate::rdma::setup`]) says "I reserved
//!   receive slabs and will advertise them". Without it the peer never waits for a buffer and
//!   sends everything by SEND (copied).
//! - **Advertisement.** A receiver advertises its free slabs ([`crate::rdma::pool`]) in an ADV
//!   message: a SEND WITH IMM with [`IMM_ADV`] set (the low 16 bits return credits as on any
//!   message) whose payload is `version u16 | count u16 | count × (addr u64, rkey u32, len
//!   u32)`, little endian, length-checked ([`decode_adv`]). Right after setup (and after a
//!   hand-off) it advertises all of them; later each slab is re-advertised once the user has
//!   dropped the `Bytes` it was handed up in. Buffers are numbered in advertisement order on
//!   both sides (14 bits, wrapping).
//! - **Large credits.** The sender keeps the advertised buffers in a FIFO; one WRITE uses the
//!   front one. A WRITE is never posted without one, and (like every data message) only with
//!   at least two send credits, because a WRITE WITH IMM consumes a receive on the peer (its
//!   buffer untouched; reposted at once and credited back). No RNR in normal operation.
//! - **Data.** A queued `Bytes` of at least [`ZC_MIN`](crate::rdma::pool::ZC_MIN) bytes that
//!   lies in this core's pool (send chunks from `alloc`, or a received slab being echoed;
//!   slices allowed) goes by WRITE WITH IMM from where it is, in pieces of at most the front
//!   buffer's length; its immediate carries the buffer's number (bits 16..30) and returned
//!   credits. A clone of the piece stays in the in-flight list until the completion, so the
//!   chunk is not reused before the adapter has read it. While the peer has the `ZC` flag but
//!   no buffer is advertised, the queue waits (the receiver is holding them all). Every other
//!   payload (heap memory, other cores' memory, short pieces) keeps the SEND path: copied into
//!   16 KiB send chunks.
//! - **Order.** WRITE WITH IMM and SEND consume the peer's receives in posting order (RC), so
//!   `recv` returns pieces in stream order: a written slab is one chunk of the stream, handed
//!   up without a copy ([`Ready::Large`]).
//! - **Limitation.** An advertisement obeys the data rule (never the last send credit: the
//!   credit-deadlock argument of [`crate::rdma::conn`] needs that). So a receiver whose own
//!   data fills the writer's receive buffers, unread by the writer's user, cannot
//!   re-advertise until that user reads: a side that stops reading can stall its own large
//!   sends (small ones, SEND-only, are not affected). A connection always reading (the
//!   messenger) never sees this.
//! - **Hand-off.** Registered memory is per core. `into_transfer` is refused while a WRITE is
//!   in flight or queued (as any send). On a move both sides forget the peer's advertisements
//!   and number from zero again: the mover gives back its slabs on the old core (slabs still
//!   held by the user go back there when dropped; unreturned written data is copied into the
//!   transfer) and reserves new ones on the target core; the staying side takes its advertised
//!   slabs back. Both re-advertise once the new queue pair is live.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use crate::rdma::conn::{Conn, Dead, Phase};
use crate::rdma::core::CoreRdma;
use crate::rdma::pool::{SLAB, ZC_MIN};
use crate::rdma::verbs::RemoteBuf;

/// Immediate data of a SEND: the payload is an advertisement.
pub(crate) const IMM_ADV: u32 = 1 << 30;
const SEQ_SHIFT: u32 = 16;
const SEQ_MASK: u32 = 0x3fff;
const ADV_VERSION: u16 = 1;
const ADV_HDR: usize = 4;
const ADV_REC: usize = 16;
/// Most buffers a peer may have advertised and not yet used.
pub(crate) const MAX_REMOTE: usize = 256;
/// Largest receive buffer a peer may advertise.
const MAX_REMOTE_LEN: u32 = 16 << 20;

/// A received message not yet returned by `recv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// In receive buffer `idx` (copied out by `recv`), `len` bytes.
    Small(u32, u32),
    /// Written into slab `s` (handed up without a copy), `len` bytes.
    Large(u32, u32),
}

/// Zero-copy counters of one endpoint (test and benchmark hook, not API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RdmaZcStats {
    /// Payload bytes sent by RDMA WRITE straight from registered memory.
    pub write_bytes: u64,
    /// RDMA WRITEs posted.
    pub writes: u64,
    /// Payload bytes copied into send chunks (or inline) for a SEND.
    pub send_copied_bytes: u64,
    /// Bytes handed up from `recv` without a copy (written slabs).
    pub recv_zero_copy_bytes: u64,
    /// Bytes copied out of receive buffers (or slabs, on a hand-off) by `recv`.
    pub recv_copied_bytes: u64,
    /// `ibv_post_send` calls (doorbells).
    pub posts: u64,
    /// Send work requests posted (SENDs, WRITEs, credit-only messages).
    pub work_requests: u64,
    /// Pump turns the merge-send policy deferred ([`crate::merge_send`]).
    pub merge_deferrals: u64,
}

/// A connection's zero-copy state.
#[derive(Default)]
pub(crate) struct ZcConn {
    /// The peer advertises buffers (setup flag `ZC`).
    pub peer_zc: Cell<bool>,
    /// This side advertises buffers (it sent the flag; it owns slabs).
    pub local_zc: Cell<bool>,
    /// The peer's buffers, in advertisement order, with their numbers.
    pub remote: RefCell<VecDeque<(RemoteBuf, u32)>>,
    /// Number of the next buffer the peer advertises.
    pub peer_seq: Cell<u32>,
    /// Our slabs advertised and not yet written, in order, with their numbers.
    pub advertised: RefCell<VecDeque<(u32, u32)>>,
    /// Our slabs to advertise.
    pub to_advertise: RefCell<VecDeque<u32>>,
    /// Number of the next slab we advertise.
    pub adv_seq: Cell<u32>,
    pub stats: Cell<RdmaZcStats>,
}

impl ZcConn {
    pub fn count(&self, f: impl FnOnce(&mut RdmaZcStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// The immediate of a WRITE into the peer's buffer number `seq`, returning `credits`.
pub(crate) fn write_imm(seq: u32, credits: u32) -> u32 {
    ((seq & SEQ_MASK) << SEQ_SHIFT) | credits
}

/// An ADV payload.
pub(crate) fn encode_adv(bufs: &[RemoteBuf]) -> Vec<u8> {
    let mut b = Vec::with_capacity(ADV_HDR + bufs.len() * ADV_REC);
    b.extend_from_slice(&ADV_VERSION.to_le_bytes());
    b.extend_from_slice(&(bufs.len() as u16).to_le_bytes());
    for r in bufs {
        b.extend_from_slice(&r.addr.to_le_bytes());
        b.extend_from_slice(&r.rkey.to_le_bytes());
        b.extend_from_slice(&(r.len as u32).to_le_bytes());
    }
    b
}

/// Records per ADV message of at most `max` bytes.
pub(crate) fn adv_capacity(max: usize) -> usize {
    max.saturating_sub(ADV_HDR) / ADV_REC
}

/// Decodes and validates a peer's ADV payload; the error says what is wrong.
pub(crate) fn decode_adv(b: &[u8]) -> Result<Vec<RemoteBuf>, String> {
    if b.len() < ADV_HDR {
        return Err(format!(
            "rdma ADV of {} bytes, shorter than its header",
            b.len()
        ));
    }
    let version = u16::from_le_bytes([b[0], b[1]]);
    if version != ADV_VERSION {
        return Err(format!(
            "rdma ADV: version {version}, this side speaks {ADV_VERSION}"
        ));
    }
    let count = usize::from(u16::from_le_bytes([b[2], b[3]]));
    if count == 0 || b.len() != ADV_HDR + count * ADV_REC {
        return Err(format!(
            "rdma ADV: {count} records in {} bytes (length mismatch)",
            b.len()
        ));
    }
    b[ADV_HDR..]
        .chunks_exact(ADV_REC)
        .map(|r| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&r[..8]);
            let addr = u64::from_le_bytes(a);
            let rkey = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
            let len = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            if !(ZC_MIN as u32..=MAX_REMOTE_LEN).contains(&len) {
                return Err(format!(
                    "rdma ADV: buffer length {len} ({ZC_MIN}..={MAX_REMOTE_LEN})"
                ));
            }
            if addr.checked_add(u64::from(len)).is_none() {
                return Err(format!("rdma ADV: buffer at {addr:#x} wraps"));
            }
            Ok(RemoteBuf {
                addr,
                rkey,
                len: u64::from(len),
            })
        })
        .collect()
}

impl Conn {
    /// A peer's ADV message arrived (payload already read).
    pub(super) fn on_adv(self: &Rc<Self>, core: &CoreRdma, payload: &[u8]) {
        let bufs = match decode_adv(payload) {
            Ok(b) => b,
            Err(what) => return self.fail(Dead::Malformed(what)),
        };
        let mut remote = self.zc.remote.borrow_mut();
        if remote.len() + bufs.len() > MAX_REMOTE {
            drop(remote);
            return self.fail(Dead::Malformed(format!(
                "rdma ADV: more than {MAX_REMOTE} receive buffers advertised at once"
            )));
        }
        for r in bufs {
            let seq = self.zc.peer_seq.get();
            self.zc.peer_seq.set((seq + 1) & SEQ_MASK);
            remote.push_back((r, seq));
        }
        drop(remote);
        if !self.sendq.is_empty() {
            core.mark_dirty(self);
        }
    }

    /// A WRITE WITH IMM into our front advertised slab completed: `len` bytes, `imm`.
    /// Returns the ready entry, or why the peer broke the protocol.
    pub(super) fn on_write(&self, imm: u32, len: u32) -> Result<Ready, String> {
        let Some((slab, seq)) = self.zc.advertised.borrow_mut().pop_front() else {
            return Err("rdma WRITE without an advertised receive buffer".into());
        };
        let got = (imm >> SEQ_SHIFT) & SEQ_MASK;
        if got != seq {
            self.zc.to_advertise.borrow_mut().push_back(slab);
            return Err(format!(
                "rdma WRITE into receive buffer {got}, expected buffer {seq}"
            ));
        }
        if len == 0 || len as usize > SLAB {
            self.zc.to_advertise.borrow_mut().push_back(slab);
            return Err(format!(
                "rdma WRITE of {len} bytes into a {SLAB}-byte buffer"
            ));
        }
        Ok(Ready::Large(slab, len))
    }

    /// The user dropped the last `Bytes` of slab `s`: re-advertise it. `false` if this
    /// connection no longer takes slabs (closed, or handed off).
    pub(crate) fn slab_returned(self: &Rc<Self>, core: &CoreRdma, s: u32) -> bool {
        if self.closed.get() || self.phase.get() == Phase::Gone {
            return false;
        }
        self.zc.to_advertise.borrow_mut().push_back(s);
        core.mark_dirty(self);
        true
    }

    /// The next ADV payload (at most `max` bytes), moving its slabs to `advertised`.
    pub(super) fn take_adv(&self, core: &CoreRdma, max: usize) -> Option<Vec<u8>> {
        let pool = core.zc.as_ref()?;
        let mut todo = self.zc.to_advertise.borrow_mut();
        let n = todo.len().min(adv_capacity(max));
        if n == 0 {
            return None;
        }
        let mut adv = self.zc.advertised.borrow_mut();
        let bufs: Vec<RemoteBuf> = todo
            .drain(..n)
            .map(|s| {
                let seq = self.zc.adv_seq.get();
                self.zc.adv_seq.set((seq + 1) & SEQ_MASK);
                adv.push_back((s, seq));
                pool.remote(s)
            })
            .collect();
        Some(encode_adv(&bufs))
    }

    /// Address and rkey of each slab this side holds for the connection, advertised or
    /// waiting to be (not those handed to the user).
    pub(super) fn zc_slabs(&self, core: &CoreRdma) -> Vec<RemoteBuf> {
        let Some(pool) = core.zc.as_ref() else {
            return Vec::new();
        };
        let z = &self.zc;
        let adv = z.advertised.borrow();
        let todo = z.to_advertise.borrow();
        adv.iter()
            .map(|&(s, _)| s)
            .chain(todo.iter().copied())
            .map(|s| pool.remote(s))
            .collect()
    }

    /// A move retired the QP: forget the peer's buffers, take ours back (still owned, to
    /// advertise afresh on the new QP), and number from zero.
    pub(super) fn zc_reset_for_move(&self) {
        let z = &self.zc;
        z.remote.borrow_mut().clear();
        z.peer_seq.set(0);
        let adv: Vec<u32> = z
            .advertised
            .borrow_mut()
            .drain(..)
            .map(|(s, _)| s)
            .collect();
        let mut todo = z.to_advertise.borrow_mut();
        for s in adv.into_iter().rev() {
            todo.push_front(s);
        }
        z.adv_seq.set(0);
    }

    /// The QP is gone for good on this core (close, or hand-off): every slab not held by the
    /// user goes back to the core's free list (held ones follow when dropped). Written data
    /// still in `ready` must have been copied out or dropped by the caller first.
    pub(super) fn release_slabs(&self, core: &CoreRdma) {
        let Some(pool) = core.zc.as_ref() else {
            return;
        };
        let z = &self.zc;
        let mut slabs: Vec<u32> = z
            .advertised
            .borrow_mut()
            .drain(..)
            .map(|(s, _)| s)
            .collect();
        slabs.extend(z.to_advertise.borrow_mut().drain(..));
        self.ready.borrow_mut().retain(|r| match *r {
            Ready::Large(s, _) => {
                slabs.push(s);
                false
            }
            Ready::Small(..) => true,
        });
        pool.release_rx(slabs);
        z.remote.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(i: u64) -> RemoteBuf {
        RemoteBuf {
            addr: 0x1000_0000 + i * SLAB as u64,
            rkey: 0x42,
            len: SLAB as u64,
        }
    }

    #[test]
    fn adv_round_trips() {
        let bufs: Vec<RemoteBuf> = (0..5).map(buf).collect();
        assert_eq!(decode_adv(&encode_adv(&bufs)), Ok(bufs));
        assert_eq!(adv_capacity(16 << 10), 1023);
        assert_eq!(adv_capacity(3), 0);
    }

    #[test]
    fn adv_rejects_malformed() {
        let good = encode_adv(&[buf(0), buf(1)]);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("shorter", good[..3].to_vec()),
            ("length", good[..good.len() - 1].to_vec()),
            ("length", encode_adv(&[])),
        ];
        let mut b = good.clone();
        b[0] = 9;
        cases.push(("version", b));
        let mut b = good.clone();
        b[2] = 3;
        cases.push(("length", b));
        let mut b = good.clone();
        b[ADV_HDR + 12..ADV_HDR + 16].copy_from_slice(&100u32.to_le_bytes());
        cases.push(("buffer length", b));
        let mut b = good.clone();
        b[ADV_HDR + 12..ADV_HDR + 16].copy_from_slice(&(1u32 << 30).to_le_bytes());
        cases.push(("buffer length", b));
        let mut b = good;
        b[ADV_HDR..ADV_HDR + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(("wraps", b));
        for (what, b) in cases {
            let e = decode_adv(&b).expect_err(what);
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn write_imm_layout() {
        let imm = write_imm(0x3fff + 2, 7);
        assert_eq!(imm & 0xffff, 7);
        assert_eq!((imm >> SEQ_SHIFT) & SEQ_MASK, 1);
        assert_eq!(imm & (IMM_ADV | (1 << 31)), 0);
    }
}
