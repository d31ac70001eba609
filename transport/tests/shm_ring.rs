//! Tests for the shared-memory ring over real memfd mappings.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use corewire_transport::shm::region::*;
use corewire_transport::shm::ring::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 1) as u8)
        .collect()
}

fn region(cap: usize) -> ShmRegion {
    ShmRegion::create("shm-ring-test", RingLayout::bytes_needed(cap), false).unwrap()
}

fn pair(r: &ShmRegion, cap: usize) -> (Producer, Consumer) {
    // SAFETY: the ring lies at the start of `r`, which outlives both ends in
    // every test (they are dropped before the region).
    unsafe {
        let p = Producer::init(r.as_ptr(), cap).unwrap();
        let c = Consumer::attach(r.as_ptr(), cap).unwrap();
        (p, c)
    }
}

/// Atomically writes a u64 into the mapping (simulates a hostile peer).
fn poke(r: &ShmRegion, off: usize, v: u64) {
    let p = r.range_ptr(off, 8).unwrap();
    assert_eq!(p as usize % 8, 0);
    // SAFETY: in-bounds, aligned, and the ring only uses atomics on it.
    unsafe { (*(p as *const AtomicU64)).store(v, Ordering::SeqCst) }
}

fn peek(r: &ShmRegion, off: usize) -> u64 {
    let p = r.range_ptr(off, 8).unwrap();
    // SAFETY: as in `poke`.
    unsafe { (*(p as *const AtomicU64)).load(Ordering::SeqCst) }
}

fn hdr(len: u32, kind: u32) -> u64 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b[4..].copy_from_slice(&kind.to_ne_bytes());
    u64::from_ne_bytes(b)
}

fn pop_vec(c: &mut Consumer) -> Result<Option<(u32, Vec<u8>)>, RingError> {
    c.try_pop(|k, s| (k, s.to_vec()))
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, RingError>, needle: &str) {
    match r {
        Err(RingError::Corrupt { what, .. }) if what.contains(needle) => {}
        other => panic!("expected Corrupt({needle}), got {other:?}"),
    }
}

#[test]
fn region_basics() {
    let r = ShmRegion::create("basic", 1 << 20, false).unwrap();
    assert_eq!(r.len(), 1 << 20);
    assert!(!r.is_huge());
    assert!(r.range_ptr(0, 1 << 20).is_some());
    assert!(r.range_ptr(1, 1 << 20).is_none());
    assert!(r.range_ptr(usize::MAX, 2).is_none());
    assert!(ShmRegion::create("zero", 0, false).is_err());
    assert!(ShmRegion::create("big", MAX_REGION_LEN + 1, false).is_err());
    assert!(ShmRegion::create("nul\0", 4096, false).is_err());
}

#[test]
fn region_huge_falls_back() {
    let len = 2 * HUGE_PAGE_SIZE;
    let r = ShmRegion::create("huge", len, true).unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let no_huge = meminfo
        .lines()
        .any(|l| l.starts_with("HugePages_Free:") && l.split_whitespace().nth(1) == Some("0"));
    if no_huge {
        assert!(!r.is_huge(), "no huge pages configured, must fall back");
    }
    assert_eq!(r.len(), len);
    poke(&r, len - 8, 0xdead_beef);
    assert_eq!(peek(&r, len - 8), 0xdead_beef);
    // Not a multiple of 2 MiB: normal pages.
    let r2 = ShmRegion::create("huge-odd", HUGE_PAGE_SIZE + 4096, true).unwrap();
    assert!(!r2.is_huge());
}

#[test]
fn from_fd_checks() {
    let r = region(4096);
    let len = r.len();
    let wrong = ShmRegion::from_fd(r.fd().try_clone_to_owned().unwrap(), len + 4096);
    assert!(
        matches!(wrong, Err(RegionError::SizeMismatch { .. })),
        "{wrong:?}"
    );
    let wrong = ShmRegion::from_fd(r.fd().try_clone_to_owned().unwrap(), len - 1);
    assert!(matches!(wrong, Err(RegionError::SizeMismatch { .. })));
    let huge = ShmRegion::from_fd(r.fd().try_clone_to_owned().unwrap(), MAX_REGION_LEN + 1);
    assert!(matches!(huge, Err(RegionError::BadLength { .. })));
    // An unsealed file (a peer could truncate it) is refused.
    let path = std::env::temp_dir().join(format!("shm-ring-unsealed-{}", std::process::id()));
    let f = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(8192).unwrap();
    let res = ShmRegion::from_fd(f.into(), 8192);
    assert!(matches!(res, Err(RegionError::NotSealed { .. })), "{res:?}");
    // Correct size works.
    let ok = ShmRegion::from_fd(r.fd().try_clone_to_owned().unwrap(), len).unwrap();
    assert_eq!(ok.len(), len);
}

#[test]
fn push_pop_sizes() {
    let cap = 16384;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    assert_eq!(p.max_payload(), cap / 2 - 8);
    assert_eq!(pop_vec(&mut c).unwrap(), None);
    assert!(c.is_empty());
    for (i, &n) in [0usize, 1, 7, 8, 9, 4095, p.max_payload()]
        .iter()
        .enumerate()
    {
        let data = pattern(i as u64, n);
        assert!(p.try_push(i as u32, &[&data]).unwrap());
        assert!(!c.is_empty());
        let got = pop_vec(&mut c).unwrap().unwrap();
        assert_eq!(got, (i as u32, data), "size {n}");
        assert!(c.is_empty());
    }
    let too_big = vec![0u8; p.max_payload() + 1];
    assert!(matches!(
        p.try_push(1, &[&too_big]),
        Err(RingError::TooLarge { .. })
    ));
    assert!(matches!(
        p.try_push(KIND_PAD, &[b"x"]),
        Err(RingError::ReservedKind(_))
    ));
    // Gather: uneven parts, empty parts.
    let data = pattern(99, 300);
    let parts: [&[u8]; 6] = [
        &data[..3],
        &[],
        &data[3..4],
        &data[4..17],
        &data[17..299],
        &data[299..],
    ];
    assert!(p.try_push(5, &parts).unwrap());
    assert!(p.try_push(6, &[]).unwrap());
    assert_eq!(pop_vec(&mut c).unwrap().unwrap(), (5, data.clone()));
    assert_eq!(pop_vec(&mut c).unwrap().unwrap(), (6, vec![]));
    // ShmSlice accessors.
    assert!(p.try_push(7, &[&data]).unwrap());
    c.try_pop(|_, s| {
        assert_eq!(s.len(), 300);
        let mut b = [0u8; 5];
        assert!(s.read_at(3, &mut b));
        assert_eq!(&b, &data[3..8]);
        assert!(s.read_at(295, &mut b));
        assert!(!s.read_at(296, &mut b));
        assert!(!s.read_at(usize::MAX, &mut b));
        let sub = s.slice(13, 100).unwrap();
        assert_eq!(sub.to_vec(), &data[13..113]);
        assert!(s.slice(250, 51).is_none());
        let mut small = [0u8; 10];
        assert_eq!(s.copy_to(&mut small), 10);
        assert_eq!(&small, &data[..10]);
    })
    .unwrap()
    .unwrap();
}

#[test]
fn wraparound_random_sizes() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    let max = p.max_payload() as u64;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut expect: VecDeque<(u64, usize)> = VecDeque::new();
    let (mut pushed, mut popped) = (0u64, 0u64);
    let mut full_events = 0;
    while popped < 100_000 {
        // Push a burst until full.
        for _ in 0..rng.below(8) + 1 {
            let len = match rng.below(4) {
                0 => rng.below(16),
                1 => rng.below(max + 1),
                _ => rng.below(200),
            } as usize;
            let data = pattern(pushed, len);
            let cut = rng.below(len as u64 + 1) as usize;
            if p.try_push((pushed % 1000) as u32, &[&data[..cut], &data[cut..]])
                .unwrap()
            {
                expect.push_back((pushed, len));
                pushed += 1;
            } else {
                full_events += 1;
                break;
            }
        }
        for _ in 0..rng.below(8) + 1 {
            match pop_vec(&mut c).unwrap() {
                Some((kind, got)) => {
                    let (seq, len) = expect.pop_front().unwrap();
                    assert_eq!(kind, (seq % 1000) as u32);
                    assert_eq!(got, pattern(seq, len), "record {seq}");
                    popped += 1;
                }
                None => {
                    assert!(expect.is_empty());
                    break;
                }
            }
        }
    }
    assert!(full_events > 100, "back-pressure exercised: {full_events}");
    // Wrapped many times.
    assert!(peek(&r, RingLayout::TAIL_OFFSET) > 1000 * cap as u64);
}

#[test]
fn two_threads_million() {
    const N: u64 = 1_000_000;
    let cap = 64 * 1024;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut buf = [0u8; 64];
            for seq in 0..N {
                let n = (seq % 57) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = (seq as u8).wrapping_add(i as u8);
                }
                let parts: [&[u8]; 2] = [&seq.to_le_bytes(), &buf[..n]];
                while !p.try_push(seq as u32, &parts).unwrap() {
                    std::thread::yield_now();
                }
            }
        });
        s.spawn(move || {
            let mut next = 0u64;
            let mut buf = [0u8; 72];
            while next < N {
                let got = c
                    .pop_batch(64, |kind, s| {
                        let n = s.copy_to(&mut buf);
                        assert_eq!(n, 8 + (next % 57) as usize);
                        let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        assert_eq!(seq, next);
                        assert_eq!(kind, seq as u32);
                        for (i, &b) in buf[8..n].iter().enumerate() {
                            assert_eq!(b, (seq as u8).wrapping_add(i as u8));
                        }
                        next += 1;
                    })
                    .unwrap();
                if got == 0 {
                    std::thread::yield_now();
                }
            }
            assert!(c.is_empty());
        });
    });
}

#[test]
fn second_mapping_sees_same_ring() {
    let cap = 8192;
    let a = region(cap);
    let b = ShmRegion::from_fd(a.fd().try_clone_to_owned().unwrap(), a.len()).unwrap();
    assert_ne!(a.as_ptr(), b.as_ptr());
    // SAFETY: rings at the start of regions that outlive p and c.
    let (mut p, mut c) = unsafe {
        (
            Producer::init(a.as_ptr(), cap).unwrap(),
            Consumer::attach(b.as_ptr(), cap).unwrap(),
        )
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            for seq in 0..50_000u64 {
                let data = pattern(seq, (seq % 300) as usize);
                while !p.try_push(1, &[&data]).unwrap() {
                    std::thread::yield_now();
                }
            }
        });
        s.spawn(move || {
            let mut seq = 0u64;
            while seq < 50_000 {
                match pop_vec(&mut c).unwrap() {
                    Some((1, d)) => {
                        assert_eq!(d, pattern(seq, (seq % 300) as usize));
                        seq += 1;
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                    None => std::thread::yield_now(),
                }
            }
        });
    });
    assert_eq!(
        peek(&a, RingLayout::TAIL_OFFSET),
        peek(&b, RingLayout::HEAD_OFFSET)
    );
}

#[test]
fn back_pressure() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    let mut n = 0u64;
    loop {
        let data = pattern(n, 100);
        if !p.try_push(2, &[&data]).unwrap() {
            break;
        }
        n += 1;
    }
    assert_eq!(n, (cap / 112) as u64);
    let tail = peek(&r, RingLayout::TAIL_OFFSET);
    assert!(!p.try_push(2, &[&[1u8; 100]]).unwrap(), "still full");
    assert_eq!(peek(&r, RingLayout::TAIL_OFFSET), tail, "nothing written");
    assert_eq!(p.free_space().unwrap(), cap - n as usize * 112);
    // A 100-byte record needs 112 bytes but only 64 remain before the end, so
    // it needs a 64-byte PAD plus 112 bytes at offset 0: a larger record
    // still does not fit after one pop, this one fits exactly.
    assert_eq!(pop_vec(&mut c).unwrap().unwrap(), (2, pattern(0, 100)));
    assert!(!p.try_push(2, &[&[0u8; 105]]).unwrap());
    assert!(p.try_push(2, &[&pattern(n, 100)]).unwrap());
    assert_eq!(p.free_space().unwrap(), 0);
    let mut seq = 1;
    while let Some((_, d)) = pop_vec(&mut c).unwrap() {
        assert_eq!(d, pattern(seq, 100));
        seq += 1;
    }
    assert_eq!(seq, n + 1, "nothing lost, the wrapped record came last");
    assert_eq!(p.free_space().unwrap(), cap);
}

#[test]
fn deferred_publish_and_batch() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    for i in 0..10u32 {
        assert!(p.try_push_deferred(i, &[&i.to_le_bytes()]).unwrap());
    }
    assert!(c.is_empty(), "not yet published");
    p.publish();
    let mut seen = vec![];
    assert_eq!(c.pop_batch(4, |k, _| seen.push(k)).unwrap(), 4);
    // Head is stored once per batch.
    assert_eq!(peek(&r, RingLayout::HEAD_OFFSET), 4 * 16);
    assert_eq!(c.pop_batch(100, |k, _| seen.push(k)).unwrap(), 6);
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(c.pop_batch(100, |_, _| {}).unwrap(), 0);
}

#[test]
fn waiting_protocol() {
    let r = region(4096);
    let (mut p, c) = pair(&r, 4096);
    assert!(!p.take_consumer_waiting());
    assert!(c.prepare_park(), "empty ring: may park");
    assert!(p.consumer_waiting());
    assert!(p.take_consumer_waiting());
    assert!(!p.take_consumer_waiting(), "cleared by take");
    p.try_push(1, &[b"x"]).unwrap();
    assert!(!c.prepare_park(), "data pending: do not park");
    assert!(!p.consumer_waiting(), "flag cleared again");
    c.set_waiting(true);
    assert!(p.consumer_waiting());
    c.set_waiting(false);
    assert!(!p.consumer_waiting());
}

#[test]
fn corrupt_tail() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    for _ in 0..3 {
        p.try_push(1, &[&[0u8; 24]]).unwrap();
    }
    pop_vec(&mut c).unwrap().unwrap(); // head = 32
    let good_tail = peek(&r, RingLayout::TAIL_OFFSET);
    // Drain so the consumer reloads tail.
    pop_vec(&mut c).unwrap().unwrap();
    pop_vec(&mut c).unwrap().unwrap();
    poke(&r, RingLayout::TAIL_OFFSET, good_tail + cap as u64 + 8);
    assert_corrupt(pop_vec(&mut c), "tail - head");
    assert_corrupt(pop_vec(&mut c), "tail - head"); // stays an error, no progress
    poke(&r, RingLayout::TAIL_OFFSET, 8);
    assert_corrupt(pop_vec(&mut c), "tail behind head");
    poke(&r, RingLayout::TAIL_OFFSET, u64::MAX);
    assert_corrupt(pop_vec(&mut c), "tail - head");
    poke(&r, RingLayout::TAIL_OFFSET, good_tail + 3);
    assert_corrupt(c.pop_batch(10, |_, _| {}), "tail alignment");
    poke(&r, RingLayout::TAIL_OFFSET, good_tail);
    assert_eq!(pop_vec(&mut c).unwrap(), None);
    // A producer attaching to a ring whose indices are near overflow.
    poke(&r, RingLayout::TAIL_OFFSET, u64::MAX - 7);
    poke(&r, RingLayout::HEAD_OFFSET, u64::MAX - 7);
    // SAFETY: ring inside `r`, which outlives the result.
    assert_corrupt(
        unsafe { Producer::attach(r.as_ptr(), cap) },
        "tail too large",
    );
}

#[test]
fn corrupt_head() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    // Advance past one full lap.
    for _ in 0..100 {
        p.try_push(1, &[&[0u8; 56]]).unwrap();
        pop_vec(&mut c).unwrap().unwrap();
    }
    let tail = peek(&r, RingLayout::TAIL_OFFSET);
    assert_eq!(tail, 6400);
    assert_eq!(p.free_space().unwrap(), cap);
    poke(&r, RingLayout::HEAD_OFFSET, tail + 8);
    assert_corrupt(p.free_space(), "head beyond tail");
    poke(&r, RingLayout::HEAD_OFFSET, tail - cap as u64 - 8);
    assert_corrupt(p.free_space(), "tail - head");
    poke(&r, RingLayout::HEAD_OFFSET, tail - 64);
    assert_corrupt(p.free_space(), "backwards");
    // A full ring with a bogus head: push reports an error, not Ok(false).
    poke(&r, RingLayout::HEAD_OFFSET, tail);
    while p.try_push(1, &[&[0u8; 100]]).unwrap() {}
    poke(&r, RingLayout::HEAD_OFFSET, u64::MAX - 7);
    assert_corrupt(p.try_push(1, &[&[0u8; 100]]), "head beyond tail");
    // Attach with an unaligned head.
    poke(&r, RingLayout::HEAD_OFFSET, 5);
    // SAFETY: ring inside `r`, which outlives the result.
    let res = unsafe { Consumer::attach(r.as_ptr(), cap) };
    assert_corrupt(res, "head alignment");
}

#[test]
fn corrupt_record_len() {
    let cap = 4096;
    let d = RingLayout::DATA_OFFSET;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    // Len far larger than the ring.
    p.try_push(1, &[&[7u8; 16]]).unwrap();
    poke(&r, d, hdr(1 << 20, 1));
    assert_corrupt(pop_vec(&mut c), "past end");
    poke(&r, d, hdr(u32::MAX, 1));
    assert_corrupt(pop_vec(&mut c), "past end");
    poke(&r, d, hdr(u32::MAX, KIND_PAD));
    assert_corrupt(pop_vec(&mut c), "past end");
    // Len within the ring but beyond the published bytes.
    poke(&r, d, hdr(100, 1));
    assert_corrupt(pop_vec(&mut c), "beyond published");
    poke(&r, d, hdr(16, 1));
    assert_eq!(pop_vec(&mut c).unwrap().unwrap(), (1, vec![7u8; 16]));

    // A PAD record whose len points past the end of the data area.
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    p.try_push(1, &[&[0u8; 2000]]).unwrap();
    p.try_push(1, &[&[0u8; 2000]]).unwrap(); // tail = 4016
    pop_vec(&mut c).unwrap().unwrap();
    pop_vec(&mut c).unwrap().unwrap();
    p.try_push(2, &[&[9u8; 100]]).unwrap(); // PAD at 4016 + record at 0
    assert_eq!(peek(&r, d + 4016), hdr(72, KIND_PAD));
    poke(&r, d + 4016, hdr(80, KIND_PAD));
    assert_corrupt(pop_vec(&mut c), "past end");
    poke(&r, d + 4016, hdr(72, KIND_PAD));
    assert_eq!(pop_vec(&mut c).unwrap().unwrap(), (2, vec![9u8; 100]));

    // A non-PAD record larger than the max payload but inside the ring.
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    p.try_push(1, &[&[0u8; 2000]]).unwrap();
    p.try_push(1, &[&[0u8; 2000]]).unwrap();
    poke(&r, d, hdr(3000, 1));
    assert_corrupt(pop_vec(&mut c), "max payload");
}

#[test]
fn bad_header_on_attach() {
    let cap = 4096;
    let r = region(cap * 4);
    // SAFETY (all blocks below): rings inside `r`, which outlives the results.
    unsafe { Producer::init(r.as_ptr(), cap).unwrap() };
    let attach = |cap| unsafe { Consumer::attach(r.as_ptr(), cap) };
    assert!(attach(cap).is_ok());
    let is_bad = |res: Result<Consumer, RingError>, w: &str| matches!(res, Err(RingError::BadHeader { what, .. }) if what == w);
    assert!(is_bad(attach(cap * 2), "capacity"));
    let magic = peek(&r, 0);
    poke(&r, 0, magic ^ 1);
    assert!(is_bad(attach(cap), "magic"));
    // SAFETY: as above.
    assert!(matches!(
        unsafe { Producer::attach(r.as_ptr(), cap) },
        Err(RingError::BadHeader { what: "magic", .. })
    ));
    poke(&r, 0, magic);
    poke(&r, 8, peek(&r, 8) + 1);
    assert!(is_bad(attach(cap), "version"));
    // Uninitialized memory.
    let off = RingLayout::bytes_needed(cap).next_multiple_of(4096);
    let base = r.range_ptr(off, RingLayout::bytes_needed(cap)).unwrap();
    // SAFETY: `base` range is inside `r`.
    assert!(unsafe { Consumer::attach(base, cap) }.is_err());
    // Capacity / alignment validation.
    // SAFETY: each call fails validation before touching memory, and the
    // ranges are inside `r` anyway.
    unsafe {
        assert_eq!(
            Consumer::init(r.as_ptr(), 5000).unwrap_err(),
            RingError::BadCapacity(5000)
        );
        assert!(matches!(
            Producer::init(r.as_ptr(), 2048),
            Err(RingError::BadCapacity(2048))
        ));
        assert!(matches!(
            Producer::init(r.as_ptr().add(64), cap),
            Err(RingError::Misaligned(_))
        ));
    }
}

/// A hostile peer scribbling random values everywhere: every operation either
/// works or reports an error; nothing panics or hangs.
#[test]
fn random_scribbles_never_panic() {
    let cap = 4096;
    let r = region(cap);
    let (mut p, mut c) = pair(&r, cap);
    let mut rng = Rng(42);
    let mut errors = 0u32;
    for _ in 0..200_000 {
        match rng.below(10) {
            0 => {
                let off = match rng.below(4) {
                    0 => RingLayout::TAIL_OFFSET,
                    1 => RingLayout::HEAD_OFFSET,
                    _ => RingLayout::DATA_OFFSET + 8 * rng.below(cap as u64 / 8) as usize,
                };
                let v = match rng.below(3) {
                    0 => rng.next(),
                    1 => peek(&r, off).wrapping_add(rng.below(64)).wrapping_sub(32),
                    _ => hdr(
                        rng.below(cap as u64 * 2) as u32,
                        u32::MAX - 2 + rng.below(3) as u32,
                    ),
                };
                poke(&r, off, v);
            }
            1..=4 => {
                let data = vec![1u8; rng.below(p.max_payload() as u64 + 1) as usize];
                if p.try_push(1, &[&data]).is_err() {
                    errors += 1;
                }
            }
            _ => {
                let res = c.try_pop(|_, s| {
                    assert!(s.len() <= cap / 2);
                    s.to_vec().len()
                });
                if res.is_err() {
                    errors += 1;
                }
            }
        }
        if rng.below(500) == 0 {
            // The peer re-creates the ring (our side re-attaches).
            (p, c) = pair(&r, cap);
        }
    }
    assert!(errors > 100, "scribbles were detected: {errors}");
}
