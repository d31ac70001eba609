//! The send hot path: [`Conn::pump`] turns what a connection has queued into one chain of
//! work requests (see [`crate::rdma::conn`] for SEND and credits, [`crate::rdma::zerocopy`]
//! for WRITE and advertisements).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::merge_send::Decision;
use crate::rdma::conn::{Conn, Dead, InFlight, Phase, CREDIT_THRESHOLD, IMM_CREDITS, IMM_EOS};
use crate::rdma::conn::{SIGNAL_EVERY, SQ_DEPTH};
use crate::rdma::core::CoreRdma;
use crate::rdma::verbs::{RemoteBuf, SendOp, SendWr, Sge};
use crate::rdma::zerocopy::{adv_capacity, write_imm, IMM_ADV};

/// Receives the pieces of a payload being staged.
type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// Where a planned message's payload is.
enum Src {
    None,
    /// Copied into `scratch` at this offset; posted inline.
    Inline(usize),
    /// Copied into this send-pool chunk.
    Chunk(u32),
    /// RDMA WRITE from registered memory (the piece, its lkey) into the peer's buffer.
    Write(Bytes, u32, RemoteBuf),
}

/// One planned message.
struct Msg {
    imm: u32,
    src: Src,
    len: usize,
    /// Carries data or end of stream (counted for the hand-off loss check).
    data: bool,
}

impl Conn {
    /// Posts what can be posted now as one chain; returns whether anything was posted.
    pub(crate) fn pump(self: &Rc<Self>, core: &CoreRdma) -> bool {
        if self.dead.borrow().is_some() || self.phase.get() != Phase::Live {
            return false;
        }
        let qp_ref = self.qp.borrow();
        let Some(qp) = qp_ref.as_ref() else {
            return false;
        };
        // Merge send: a busy QP may wait for a fuller batch (see `crate::merge_send`).
        let urgent = (self.eos_wanted.get() && !self.eos_posted.get())
            || !self.zc.to_advertise.borrow().is_empty()
            || self.owed.get() >= CREDIT_THRESHOLD;
        let mut merge = self.merge.get();
        let decision = merge.decide(
            &self.cfg.merge_send,
            self.sq_used.get(),
            self.sendq.bytes(),
            urgent,
        );
        self.merge.set(merge);
        if decision == Decision::Defer {
            self.zc.count(|s| s.merge_deferrals += 1);
            return false;
        }
        let pool = core.zc.as_ref();
        let peer_zc = self.zc.peer_zc.get();
        // Goes by RDMA WRITE (given an advertised buffer): in this core's pool, long enough.
        let zc_lkey = |b: &Bytes| {
            if peer_zc {
                pool.and_then(|p| p.lkey_of(b))
            } else {
                None
            }
        };
        let max_inline = self.max_inline.get();
        let msg_max = self.msg_max.get();
        let mut plan: Vec<Msg> = Vec::new();
        let mut scratch: Vec<u8> = Vec::new();
        let mut taken: VecDeque<Bytes> = if self.sendq.is_empty() {
            VecDeque::new()
        } else {
            self.sendq.take_batch(usize::MAX).into()
        };
        let mut queued: usize = taken.iter().map(Bytes::len).sum();
        let mut credits = self.credits.get();
        let mut slots = SQ_DEPTH - self.sq_used.get();
        let mut starved = false;
        let mut copied = 0u64;
        let take_owed = || {
            let owed = self.owed.replace(0);
            let give = owed.min(IMM_CREDITS);
            self.owed.set(owed - give);
            give
        };
        // Stages `len` bytes taken from `fill` inline or in a fresh chunk; `None`: no chunk.
        let stage = |scratch: &mut Vec<u8>, len: usize, fill: &mut dyn FnMut(Sink<'_>)| {
            if len <= max_inline {
                let at = scratch.len();
                fill(&mut |piece| scratch.extend_from_slice(piece));
                return Some(Src::Inline(at));
            }
            let c = core.pool.get()?;
            let dst = core.pool.chunk_ptr(c);
            let mut off = 0;
            fill(&mut |piece| {
                assert!(off + piece.len() <= len);
                // SAFETY: chunk `c` was just taken from the free list, so no posted request
                // names it; `off + piece.len() <= len <= CHUNK` (asserted), inside it.
                unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), dst.add(off), piece.len()) };
                off += piece.len();
            });
            Some(Src::Chunk(c))
        };
        'post: while slots > 0 {
            let msg = 'pick: {
                // Advertisements first: they let the peer send large payloads to us.
                if credits >= 2 && !self.zc.to_advertise.borrow().is_empty() {
                    let n = self
                        .zc
                        .to_advertise
                        .borrow()
                        .len()
                        .min(adv_capacity(msg_max));
                    // Reserve the staging room before moving slabs to `advertised`.
                    let chunk = if 4 + 16 * n <= max_inline {
                        None
                    } else if let Some(c) = core.pool.get() {
                        Some(c)
                    } else {
                        starved = true;
                        break 'post;
                    };
                    if let Some(payload) = self.take_adv(core, msg_max) {
                        if let Some(c) = chunk {
                            core.pool.put(c);
                        }
                        let src = stage(&mut scratch, payload.len(), &mut |f| f(&payload))
                            .expect("a chunk was just returned");
                        break 'pick Some(Msg {
                            imm: IMM_ADV | take_owed(),
                            src,
                            len: payload.len(),
                            data: false,
                        });
                    }
                    if let Some(c) = chunk {
                        core.pool.put(c);
                    }
                }
                // Empty buffers carry nothing (and must not end a copy run at zero bytes).
                while taken.front().is_some_and(Bytes::is_empty) {
                    taken.pop_front();
                }
                if queued > 0 && credits >= 2 {
                    let front = taken.front_mut().expect("bytes queued");
                    if let Some(lkey) = zc_lkey(front) {
                        let Some((rb, seq)) = self.zc.remote.borrow_mut().pop_front() else {
                            // Wait for the receiver to advertise a buffer (its ADV marks us
                            // dirty); credit-only messages may still go.
                            break 'pick None;
                        };
                        let n = front.len().min(rb.len as usize);
                        let piece = if n == front.len() {
                            taken.pop_front().expect("front")
                        } else {
                            front.split_to(n)
                        };
                        queued -= n;
                        break 'pick Some(Msg {
                            imm: write_imm(seq, take_owed()),
                            src: Src::Write(piece, lkey, rb),
                            len: n,
                            data: true,
                        });
                    }
                    // Copied: the bytes up to the next zero-copy piece, at most one message.
                    let mut run = 0;
                    for b in taken.iter() {
                        if run >= msg_max || zc_lkey(b).is_some() {
                            break;
                        }
                        run += b.len();
                    }
                    let len = run.min(msg_max);
                    let Some(src) = stage(&mut scratch, len, &mut |f| copy_out(&mut taken, len, f))
                    else {
                        starved = true;
                        break 'post;
                    };
                    queued -= len;
                    copied += len as u64;
                    break 'pick Some(Msg {
                        imm: take_owed(),
                        src,
                        len,
                        data: true,
                    });
                }
                None
            };
            let msg = match msg {
                Some(m) => m,
                None if queued == 0
                    && self.eos_wanted.get()
                    && !self.eos_posted.get()
                    && credits >= 2 =>
                {
                    self.eos_posted.set(true);
                    Msg {
                        imm: IMM_EOS | take_owed(),
                        src: Src::None,
                        len: 0,
                        data: true,
                    }
                }
                None if self.owed.get() >= CREDIT_THRESHOLD && credits >= 1 => Msg {
                    imm: take_owed(),
                    src: Src::None,
                    len: 0,
                    data: false,
                },
                None => break,
            };
            plan.push(msg);
            credits -= 1;
            slots -= 1;
        }
        // Whatever did not fit goes back to the front of the queue.
        if !taken.is_empty() {
            self.sendq.unshift(taken.into());
        }
        self.sendq.batch_done();
        if starved {
            core.mark_starved(self);
        }
        if plan.is_empty() {
            return false;
        }
        let lkey = core.pool.lkey();
        let sges: Vec<Option<Sge>> = plan
            .iter()
            .map(|m| match &m.src {
                Src::None => None,
                Src::Inline(at) => Some(Sge {
                    addr: scratch[*at..].as_ptr() as u64,
                    len: m.len as u32,
                    lkey: 0,
                }),
                Src::Chunk(c) => Some(Sge {
                    addr: core.pool.chunk_ptr(*c) as u64,
                    len: m.len as u32,
                    lkey,
                }),
                Src::Write(piece, lkey, _) => Some(Sge {
                    addr: piece.as_ptr() as u64,
                    len: m.len as u32,
                    lkey: *lkey,
                }),
            })
            .collect();
        let n = plan.len();
        let first = self.next_seq.get();
        let wrs: Vec<SendWr<'_>> = plan
            .iter()
            .zip(&sges)
            .enumerate()
            .map(|(i, (m, sge))| {
                let seq = first + i as u64;
                SendWr {
                    wr_id: seq,
                    op: match &m.src {
                        Src::Write(_, _, rb) => SendOp::WriteWithImm(*rb, m.imm),
                        _ => SendOp::SendWithImm(m.imm),
                    },
                    sges: sge.as_slice(),
                    signaled: seq.is_multiple_of(SIGNAL_EVERY) || i + 1 == n,
                    solicited: false,
                }
            })
            .collect();
        // SAFETY: inline payloads (at most `max_inline_data` bytes) are copied by the post
        // itself out of `scratch`, alive until it returns. Chunk payloads name pool chunks of
        // the core's send pool (registered in this QP's PD), owned by this connection from
        // here until the signaled completion covering them is polled or the QP is destroyed
        // (`inflight` keeps them; `close` returns them only after the QP is gone). WRITE
        // payloads lie inside one of the core's zero-copy regions (`lkey_of` checked the
        // range; registered in this PD), and `inflight` keeps a clone of their `Bytes` for
        // as long, so the chunk or slab is neither reused nor unmapped meanwhile. The remote
        // buffers were advertised by the peer for exactly this use.
        let r = unsafe { qp.post_send(&wrs) };
        drop(qp_ref);
        let mut writes = (0u64, 0u64);
        {
            let mut inflight = self.inflight.borrow_mut();
            for (i, m) in plan.into_iter().enumerate() {
                let (chunk, pin) = match m.src {
                    Src::Chunk(c) => (Some(c), None),
                    Src::Write(piece, _, _) => {
                        writes.0 += 1;
                        writes.1 += m.len as u64;
                        (None, Some(piece))
                    }
                    _ => (None, None),
                };
                if m.data {
                    self.data_sent.set(self.data_sent.get() + 1);
                }
                inflight.push_back(InFlight {
                    seq: first + i as u64,
                    chunk,
                    data: m.data,
                    _pin: pin,
                });
            }
        }
        self.zc.count(|s| {
            s.writes += writes.0;
            s.write_bytes += writes.1;
            s.send_copied_bytes += copied;
            s.posts += 1;
            s.work_requests += n as u64;
        });
        self.next_seq.set(first + n as u64);
        self.sq_used.set(self.sq_used.get() + n as u32);
        self.credits.set(credits);
        if let Err(e) = r {
            // Some may have been posted: the chunks stay in `inflight` and come back when the
            // QP (moved to ERR now) flushes or is destroyed.
            self.fail(Dead::Reset(e.to_string()));
        }
        true
    }
}

/// Takes `len` bytes off the front of `q`, handing them to `f` piece by piece.
fn copy_out(q: &mut VecDeque<Bytes>, mut len: usize, f: &mut dyn FnMut(&[u8])) {
    while len > 0 {
        let front = q.front_mut().expect("enough bytes queued");
        if front.len() <= len {
            len -= front.len();
            f(front);
            q.pop_front();
        } else {
            let head = front.split_to(len);
            f(&head);
            len = 0;
        }
    }
}
