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
    len: usize,
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
            len: 0,
        }
    }

    /// Append `b` (copied when small, by reference otherwise; empty buffers are skipped).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        if b.len() <= self.copy_max {
            if self.run.capacity() - self.run.len() < b.len() {
                self.seal();
                self.run.reserve(RUN_CAPACITY.max(b.len()));
            }
            self.run.extend_from_slice(&b);
        } else {
            self.seal();
            self.bufs.push(b);
        }
    }

    /// Append every buffer of `bufs`.
    pub fn extend(&mut self, bufs: impl IntoIterator<Item = Bytes>) {
        bufs.into_iter().for_each(|b| self.push(b));
    }

    /// Close the current run (its bytes become one buffer).
    fn seal(&mut self) {
        if !self.run.is_empty() {
            self.bufs.push(self.run.split().freeze());
        }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
