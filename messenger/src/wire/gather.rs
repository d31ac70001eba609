//! The buffers of one write, with small ones gathered into contiguous runs.
//!
//! A msgr2 MESSAGE frame is five buffers: a 32-byte preamble, the header segment, its 4-byte
//! crc, the data and a 13-byte epilogue. Written as they are, a batch of messages hands the
//! transport five pieces per message, and a transport that pays per piece pays it five
//! times: the shm ring takes one chunk per buffer (measured: gathering doubles shm throughput
//! for 4 KiB messages, see `perf/README.md`, "Gathered writes"). [`Gather`] copies every
//! buffer of at most `copy_max` bytes into one growing run and passes larger ones by
//! reference, so a batch of small frames is one buffer while a large payload still goes out
//! without a copy (the zero-copy paths of the RDMA and shm transports start above
//! `copy_max`).

use bytes::{Bytes, BytesMut};

/// Buffers up to this size are copied into the current run by [`Gather::default`]: a page.
/// Over shm, 4 KiB and 16 KiB limits measured the same, both about twice no gathering; over
/// tcp no limit made a measurable difference (`perf/README.md`, "Gathered writes").
pub const DEFAULT_COPY_MAX: usize = 4096;

/// Capacity of a new run (grown on demand).
const RUN_CAPACITY: usize = 16 << 10;

/// The buffers of one write; see the module docs.
#[derive(Debug)]
pub struct Gather {
    bufs: Vec<Bytes>,
    run: BytesMut,
    copy_max: usize,
    /// Bytes in `bufs` (the open run's are `run.len()`).
    sealed: usize,
}

impl Default for Gather {
    fn default() -> Self {
        Gather::new(DEFAULT_COPY_MAX)
    }
}

impl Gather {
    /// An empty write that copies buffers of at most `copy_max` bytes.
    pub fn new(copy_max: usize) -> Gather {
        Gather {
            bufs: Vec::new(),
            run: BytesMut::new(),
            copy_max,
            sealed: 0,
        }
    }

    /// Append `b` (copied when small, by reference otherwise; empty buffers are skipped).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if b.len() <= self.copy_max {
            self.put_slice(&b);
        } else {
            self.seal();
            self.sealed += b.len();
            self.bufs.push(b);
        }
    }

    /// As [`Self::push`] for a borrowed buffer: cloned (a reference count) only when it goes
    /// by reference, not when it is copied into the run.
    pub fn push_ref(&mut self, b: &Bytes) {
        if b.len() <= self.copy_max {
            if !b.is_empty() {
                self.put_slice(b);
            }
        } else {
            self.push(b.clone());
        }
    }

    /// Append a copy of `b` to the open run.
    pub fn put_slice(&mut self, b: &[u8]) {
        self.room(b.len()).extend_from_slice(b);
    }

    /// The open run, with room for `n` more bytes without growing.
    fn room(&mut self, n: usize) -> &mut BytesMut {
        if self.run.capacity() - self.run.len() < n {
            self.seal();
            self.run.reserve(RUN_CAPACITY.max(n));
        }
        &mut self.run
    }

    /// Append every buffer of `bufs`.
    pub fn extend(&mut self, bufs: impl IntoIterator<Item = Bytes>) {
        bufs.into_iter().for_each(|b| self.push(b));
    }

    /// Close the current run (its bytes become one buffer).
    fn seal(&mut self) {
        if !self.run.is_empty() {
            self.sealed += self.run.len();
            self.bufs.push(self.run.split().freeze());
        }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.sealed + self.run.len()
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buffers the write has so far (the open run counts as one).
    pub fn buf_count(&self) -> usize {
        self.bufs.len() + usize::from(!self.run.is_empty())
    }

    /// The buffers, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        self.seal();
        self.bufs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(bufs: &[Bytes]) -> Vec<u8> {
        bufs.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn small_buffers_become_one_run_and_large_ones_stay_by_reference() {
        let big = Bytes::from(vec![9u8; 8192]);
        let mut g = Gather::new(4096);
        g.push(Bytes::from_static(b"pre"));
        g.push(Bytes::new());
        g.push(Bytes::from(vec![1u8; 4096]));
        g.push(big.clone());
        g.push(Bytes::from_static(b"epi"));
        g.push(Bytes::from_static(b"logue"));
        assert_eq!(g.len(), 3 + 4096 + 8192 + 8);
        assert_eq!(g.buf_count(), 3);
        let bufs = g.finish();
        assert_eq!(bufs.len(), 3);
        assert_eq!(bufs[0].len(), 3 + 4096);
        // The large buffer is the caller's memory, not a copy.
        assert_eq!(bufs[1].as_ptr(), big.as_ptr());
        assert_eq!(&bufs[2][..], b"epilogue");
        let mut want = b"pre".to_vec();
        want.extend([1u8; 4096]);
        want.extend([9u8; 8192]);
        want.extend(b"epilogue");
        assert_eq!(concat(&bufs), want);
        // push_ref: the same buffers, borrowed.
        let mut r = Gather::new(4096);
        for b in [
            Bytes::from_static(b"pre"),
            Bytes::new(),
            Bytes::from(vec![1u8; 4096]),
            big.clone(),
            Bytes::from_static(b"epi"),
            Bytes::from_static(b"logue"),
        ] {
            r.push_ref(&b);
        }
        let rbufs = r.finish();
        assert_eq!(rbufs.len(), 3);
        assert_eq!(rbufs[1].as_ptr(), big.as_ptr());
        assert_eq!(concat(&rbufs), want);
    }

    #[test]
    fn a_full_run_is_sealed_and_a_new_one_started_without_moving_sealed_bytes() {
        let mut g = Gather::new(4096);
        let pieces: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 4000])).collect();
        g.extend(pieces.iter().cloned());
        let bufs = g.finish();
        assert!(bufs.len() > 1, "{} runs", bufs.len());
        let want: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(concat(&bufs), want);
    }

    /// The writer's in-place encoding is byte for byte `to_wire`, for every segment shape
    /// (empty ones, small ones gathered, large ones by reference) and with frames before it.
    #[test]
    fn message_frames_encoded_in_place_equal_to_wire() {
        use crate::wire::{MessageFrame, MsgHeader2};
        let seg = |n: usize| Bytes::from((0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
        let sizes = [0, 1, 13, 4096, 4097, 70_000];
        let mut frames = Vec::new();
        for (k, &f) in sizes.iter().enumerate() {
            for &m in &sizes[..3] {
                for &d in &sizes {
                    frames.push(MessageFrame {
                        header: MsgHeader2 {
                            seq: k as u64 + 1,
                            tid: 0x0102_0304_0506_0708,
                            msg_type: 42,
                            priority: 127,
                            version: 3,
                            data_pre_padding_len: 5,
                            data_off: 9,
                            ack_seq: 77,
                            flags: 1,
                            compat_version: 2,
                            reserved: 0xbeef,
                        },
                        front: seg(f),
                        middle: seg(m),
                        data: seg(d),
                    });
                }
            }
        }
        let mut g = Gather::default();
        let mut want = Vec::new();
        for f in &frames {
            f.encode_into(&mut g).unwrap();
            want.extend(concat(&f.to_wire().unwrap()));
        }
        let bufs = g.finish();
        assert_eq!(concat(&bufs), want);
        // 70 000-byte segments went by reference.
        assert!(bufs.iter().any(|b| b.len() == 70_000));
    }

    #[test]
    fn copy_max_zero_keeps_every_buffer_as_given() {
        let mut g = Gather::new(0);
        g.extend([Bytes::from_static(b"a"), Bytes::from_static(b"bc")]);
        assert_eq!(
            g.finish(),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")]
        );
    }
}
