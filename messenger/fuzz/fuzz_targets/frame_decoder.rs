//! Fuzzes `FrameDecoder` (banner, then msgr2.1 crc-mode frames) and `Frame::decode`.
//!
//! Input layout: see `corewire_messenger_fuzz` (flags, chunk sizes, stream).
//!
//! Properties checked, beyond "never panics":
//! * chunking does not matter: the stream fed in fuzzer-chosen chunks (draining frames after
//!   every chunk, as the messenger's reader does) gives the same banner, frames, error and
//!   aborted-frame count as the whole stream fed at once;
//! * memory stays bounded: `buffered()` never exceeds the bytes fed so far;
//! * `next_frame()` returning `Ok(None)` means `bytes_needed() > 0`;
//! * every frame that `Frame::decode` accepts re-encodes (`to_wire`) into exactly one frame
//!   that decodes back to an equal `Frame`.
#![no_main]

use bytes::{Bytes, BytesMut};
use corewire_messenger::wire::{Banner, Frame, FrameDecoder, Tag, WireError};
use corewire_messenger_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// Small cap so that lengths in the preamble are checked against it and big segments
/// are rejected before anything is allocated.
const MAX_SEGMENT_LEN: u32 = 1 << 20;

#[derive(Debug, PartialEq)]
struct Outcome {
    banner: Result<Option<Banner>, WireError>,
    frames: Vec<(Tag, Vec<Bytes>)>,
    /// The error that ended the stream, if any.
    error: Option<WireError>,
    aborted: u64,
}

/// Feeds `chunks` in turn, decoding the banner first and then every frame that is complete
/// after each chunk.
fn run(chunks: &[Bytes]) -> Outcome {
    let mut dec = FrameDecoder::with_max_segment_len(MAX_SEGMENT_LEN);
    let mut fed = 0usize;
    let mut banner = Ok(None);
    let mut frames = Vec::new();
    let mut error = None;
    for chunk in chunks {
        fed += chunk.len();
        dec.feed(chunk.clone());
        assert!(
            dec.buffered() <= fed,
            "{} buffered > {fed} fed",
            dec.buffered()
        );
        if let Ok(None) = banner {
            banner = dec.next_banner();
            assert!(dec.buffered() <= fed);
            match banner {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(_) => break,
            }
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => {
                    assert!(dec.bytes_needed() > 0, "Ok(None) but nothing needed");
                    break;
                }
                Err(e) => {
                    // The decoder stays failed.
                    assert_eq!(
                        dec.next_frame(),
                        Err(WireError::Poisoned(Box::new(e.clone())))
                    );
                    error = Some(e);
                    break;
                }
            }
            assert!(dec.buffered() <= fed);
        }
        if error.is_some() {
            break;
        }
    }
    Outcome {
        banner,
        frames,
        error,
        aborted: dec.aborted_frames(),
    }
}

/// `to_wire` of a decoded frame must give one frame that decodes back to it.
fn check_roundtrip(frame: &Frame) {
    let parts = frame.to_wire().expect("re-encoding a decoded frame");
    let mut wire = BytesMut::new();
    for p in &parts {
        wire.extend_from_slice(p);
    }
    let mut dec = FrameDecoder::with_max_segment_len(MAX_SEGMENT_LEN);
    dec.feed(wire.freeze());
    let (tag, segs) = dec
        .next_frame()
        .expect("decoding a re-encoded frame")
        .expect("a whole re-encoded frame");
    assert_eq!(tag, frame.tag());
    assert_eq!(dec.buffered(), 0, "bytes left after a re-encoded frame");
    let again = Frame::decode(tag, &segs).expect("decoding a re-encoded frame's payload");
    assert_eq!(&again, frame, "re-encoded frame decodes differently");
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let whole = run(std::slice::from_ref(&input.stream));
    let chunked = run(&input.chunks());
    assert_eq!(whole, chunked, "chunking changed the outcome");

    for (tag, segs) in &whole.frames {
        assert!((1..=4).contains(&segs.len()));
        if let Ok(frame) = Frame::decode(*tag, segs) {
            assert_eq!(frame.tag(), *tag);
            check_roundtrip(&frame);
        }
    }
});
