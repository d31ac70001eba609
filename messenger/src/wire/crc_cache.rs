//! A payload sent again is not summed again: Ceph's `buffer::raw` crc cache, per core.
//!
//! msgr2 in crc mode sums every segment of every frame. Ceph keeps the crc of a buffer range
//! in the buffer itself (`buffer::raw::get_crc`/`set_crc`, used by `bufferlist::crc32c`), so a
//! buffer that goes out more than once is summed once: one write replicated to several OSDs,
//! a message replayed after a reconnect, or `ceph_perf_msgr_client`, which sends the same
//! data buffer with every request. A [`Bytes`] has no room for such a field, so each thread
//! (each core: a session encodes on its own core) keeps one entry instead: the crc of the
//! last shared payload of [`MIN_LEN`] to [`MAX_LEN`] bytes it summed, with a reference to
//! that payload, keyed by its address and length.
//!
//! Why a hit is the right crc: while the entry holds its reference, the payload's memory is
//! neither freed nor handed to another buffer, and the bytes of a `Bytes` do not change while
//! any reference to them exists (a `Bytes` derefs to a shared `&[u8]`; `try_into_mut` needs
//! the only reference; the transports' registered buffers return to their pools only when
//! the last reference is dropped). So another `Bytes` with the same address and length is a
//! view of the same bytes.
//!
//! What it costs:
//! - a payload whose reference is the only one (`Bytes::is_unique`: the sender handed its
//!   buffer to the message and kept nothing, so nobody can send it again) skips the cache:
//!   one load on the path of a typical write;
//! - a shared payload that misses costs a reference count, and the evicted entry's release;
//! - the entry keeps at most one payload of at most [`MAX_LEN`] bytes per thread alive until
//!   the next miss on that thread.

use std::cell::RefCell;

use bytes::Bytes;

use super::frame::segment_crc;

/// Payloads shorter than this are summed directly: their crc costs about what a miss does.
pub const MIN_LEN: usize = 1024;
/// Payloads longer than this are summed directly, so the entry never keeps more than this
/// alive.
pub const MAX_LEN: usize = 1 << 20;

struct Entry {
    payload: Bytes,
    crc: u32,
}

thread_local! {
    static ENTRY: RefCell<Option<Entry>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ceph's crc of segment `b` (`bufferlist::crc32c(-1)`), from this thread's entry when `b`
/// is the payload summed last; see the module docs. `shared`: whether anything besides the
/// message referenced `b` before the writer took references of its own (`!b.is_unique()`
/// read before the write gathered it); a payload that is not shared bypasses the entry.
pub fn payload_crc(b: &Bytes, shared: bool) -> u32 {
    if !shared || b.len() < MIN_LEN || b.len() > MAX_LEN {
        return segment_crc(b);
    }
    ENTRY.with(|e| {
        let Ok(mut e) = e.try_borrow_mut() else {
            return segment_crc(b);
        };
        if let Some(hit) = e
            .as_ref()
            .filter(|x| x.payload.as_ptr() == b.as_ptr() && x.payload.len() == b.len())
        {
            #[cfg(test)]
            HITS.with(|h| h.set(h.get() + 1));
            return hit.crc;
        }
        let crc = segment_crc(b);
        *e = Some(Entry {
            payload: b.clone(),
            crc,
        });
        crc
    })
}

/// Payload crcs this thread took from its entry.
#[cfg(test)]
fn hits() -> u64 {
    HITS.with(std::cell::Cell::get)
}

/// Drop this thread's entry (and the reference it holds).
#[cfg(test)]
fn clear() {
    ENTRY.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = None;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt)
            .collect()
    }

    #[test]
    fn a_shared_payload_sent_again_hits_and_its_crc_is_the_computed_one() {
        clear();
        let data = Bytes::from(pattern(4096, 1));
        let keep = data.clone(); // the sender keeps a reference: shared
        let want = segment_crc(&data);
        let h0 = hits();
        assert_eq!(payload_crc(&data, !data.is_unique()), want);
        assert_eq!(hits(), h0, "first sighting is a miss");
        for _ in 0..3 {
            assert_eq!(payload_crc(&keep, true), want);
        }
        assert_eq!(hits(), h0 + 3);
    }

    #[test]
    fn a_different_payload_of_the_same_length_gets_its_own_crc() {
        clear();
        let a = Bytes::from(pattern(2048, 1));
        let _ka = a.clone();
        let b = Bytes::from(pattern(2048, 2));
        let _kb = b.clone();
        assert_eq!(payload_crc(&a, !a.is_unique()), segment_crc(&a));
        assert_eq!(payload_crc(&b, !b.is_unique()), segment_crc(&b));
        assert_ne!(segment_crc(&a), segment_crc(&b));
        // A slice of the cached payload (same address, shorter) is not a hit either.
        let h0 = hits();
        let part = b.slice(..1500);
        assert_eq!(payload_crc(&part, !part.is_unique()), segment_crc(&part));
        assert_eq!(hits(), h0);
    }

    #[test]
    fn the_entry_keeps_its_payload_alive_so_its_address_is_not_reused() {
        clear();
        let h0 = hits();
        for salt in 0..64u8 {
            // A fresh shared buffer each round, dropped by the sender right after: were the
            // address reused while the entry pointed at it, a stale crc would come back.
            let data = Bytes::from(pattern(4096, salt));
            let keep = data.clone();
            assert_eq!(
                payload_crc(&data, !data.is_unique()),
                segment_crc(&keep),
                "round {salt}"
            );
        }
        assert_eq!(hits(), h0, "no two rounds share a buffer");
    }

    #[test]
    fn unique_small_and_large_payloads_bypass_the_entry() {
        clear();
        let h0 = hits();
        let unique = Bytes::from(pattern(4096, 3));
        assert!(unique.is_unique());
        assert_eq!(
            payload_crc(&unique, !unique.is_unique()),
            segment_crc(&unique)
        );
        assert_eq!(
            payload_crc(&unique, !unique.is_unique()),
            segment_crc(&unique)
        );
        let small = Bytes::from(pattern(MIN_LEN - 1, 4));
        let _ks = small.clone();
        payload_crc(&small, !small.is_unique());
        assert_eq!(payload_crc(&small, !small.is_unique()), segment_crc(&small));
        let large = Bytes::from(pattern(MAX_LEN + 1, 5));
        let _kl = large.clone();
        payload_crc(&large, !large.is_unique());
        assert_eq!(payload_crc(&large, !large.is_unique()), segment_crc(&large));
        assert_eq!(hits(), h0, "none of them went through the entry");
    }
}
