//! `cargo bench -p corewire-perf --bench wire`: the CPU cost of msgr2.1 crc-mode framing per
//! message, on one core with no I/O, beside what it cannot go under: copying the frame's
//! bytes once and the CRC32C of its payload (crc mode makes both sides compute it).
//!
//! The messenger benchmark's client encodes one 4 KiB request frame and decodes one empty
//! reply frame per message, the server the other way round; this isolates that work from
//! the kernel's, which dominates `corewire-perf bench`. Frames go in batches of 16 (a write
//! of 16 frames gathered, one decoder fed the write), as with 16 requests in flight.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_messenger::wire::frame::ceph_crc32c;
use corewire_messenger::wire::{Frame, FrameDecoder, Gather, MessageFrame, MsgHeader2};
use corewire_perf::report::{Group, Row};

/// Run `op` for about `d`; the row of how many times it ran.
fn measure(name: &str, d: Duration, mut op: impl FnMut()) -> Row {
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < d {
        for _ in 0..256 {
            op();
        }
        ops += 256;
    }
    Row::new(name, ops, start.elapsed(), None)
}

/// Frames in one write, as the messenger bench's 16 requests in flight.
const BATCH: usize = 16;

/// One write of `BATCH` frames (as `OutQueue::next_batch` builds it), frame `i` carrying
/// `payloads[i % payloads.len()]`.
fn encode(payloads: &[Bytes]) -> Vec<Bytes> {
    let mut g = Gather::default();
    let empty = Bytes::new();
    for data in payloads.iter().cycle().take(BATCH) {
        MessageFrame::encode_parts_into(&MsgHeader2::default(), [&empty, &empty, data], &mut g)
            .expect("encode");
    }
    g.finish()
}

/// Feed one write to a session's decoder and take its frames (as the reader does).
fn decode(dec: &mut FrameDecoder, wire: &[Bytes]) -> usize {
    for b in wire {
        dec.feed(b.clone());
    }
    let mut n = 0;
    while let Some((tag, segs)) = dec.next_segments().expect("valid") {
        black_box(Frame::decode_segments(tag, segs).expect("decodes"));
        n += 1;
    }
    n
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let d = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    for size in [0usize, 4096, 64 << 10] {
        let make = || Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        // One payload per frame, each only ever borrowed, so each is unique when its crc is
        // taken: payloads their messages hold alone, summed every time. `wire` is encoded
        // from copies of its own (a large payload goes into the write by reference).
        let unique: Vec<Bytes> = (0..BATCH).map(|_| make()).collect();
        let data = &unique[0];
        let wire = encode(&[make()]);
        let wire_len: usize = wire.iter().map(Bytes::len).sum::<usize>() / BATCH;
        let mut dec = FrameDecoder::new();
        assert_eq!(decode(&mut dec, &wire), BATCH);
        let flat: Vec<u8> = wire.iter().flat_map(|b| b.iter().copied()).collect();
        let mut dst = vec![0u8; flat.len()];
        // Each row runs on a batch of BATCH messages; rows count messages.
        let per_msg = |mut r: Row| {
            r.ops *= BATCH as u64;
            r
        };
        let shared = make();
        let _sender_keeps = shared.clone();
        let rows = vec![
            per_msg(measure("encode + decode", d, || {
                black_box(decode(&mut dec, &encode(black_box(&unique))));
            })),
            per_msg(measure("encode (frames, crcs, gathered)", d, || {
                black_box(encode(black_box(&unique)));
            })),
            per_msg(measure("encode, payload shared (crc cached)", d, || {
                // The sender keeps a reference (`shared` stays shared), as a client sending one
                // buffer with every request or a primary replicating one write: the payload's
                // crc comes from the per-core cache (`wire::crc_cache`).
                black_box(encode(black_box(std::slice::from_ref(&shared))));
            })),
            per_msg(measure("decode (preambles, crcs, headers)", d, || {
                black_box(decode(&mut dec, black_box(&wire)));
            })),
            per_msg(measure("(floor: memcpy of the wire bytes)", d, || {
                dst.copy_from_slice(black_box(&flat));
                black_box(&dst);
            })),
            per_msg(measure("(floor: CRC32C of the payloads)", d, || {
                for _ in 0..BATCH {
                    black_box(ceph_crc32c(u32::MAX, black_box(data)));
                }
            })),
        ];
        let g = Group {
            title: format!("msgr2.1 MESSAGE frame, {size} B data ({wire_len} B on the wire)"),
            rows,
        };
        print!("{}", g.render());
        for r in &g.rows {
            println!("  {:<36} {:>8.1} ns/msg", r.name, 1e9 / r.ops_per_sec());
        }
    }
}
