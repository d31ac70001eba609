//! CRC-32C over long inputs by carry-less-multiply folding in 256-bit registers
//! (`VPCLMULQDQ` with AVX2), for x86-64 CPUs that have it without AVX-512.
//!
//! crc-fast, the general path of [`ceph_crc32c`](super::frame::ceph_crc32c), folds with
//! 512-bit registers where the CPU has AVX-512 (a 4 KiB payload in about 65 ns on the machine
//! of sessions 3 to 14) but falls back to 128-bit SSE folding on CPUs without it, such as the
//! AMD EPYC (Zen 3) of this machine kind since session 15: 370–390 ns for 4 KiB, more than
//! the SSE4.2 `crc32` instruction loop (about 290 ns). This fold takes about 220 ns there. The
//! server verifies every request's payload crc, so at 4 KiB × 16 in flight that is about 5% of
//! its time per message.
//!
//! The method is the one of Intel's "Fast CRC Computation Using PCLMULQDQ" for a reflected
//! CRC: the input is loaded as 16-byte lanes, four 32-byte accumulators are folded forward
//! 128 bytes at a time (each 64-bit half multiplied by `x^(D±32) mod P` for the fold distance
//! `D`), the accumulators are folded into one 16-byte remainder, and that remainder, which is
//! congruent to everything before it, goes through the `crc32` instruction with the input's
//! last bytes. The seed is the raw register ([`ceph_crc32c`](super::frame::ceph_crc32c)'s
//! convention: no inversions), XORed into the first four bytes.

/// Inputs at least this long can take the fold (one 128-byte block to load the accumulators).
pub const FOLD_MIN_LEN: usize = 128;

/// `x^n mod P` for CRC-32C's `P = 0x1_1EDC_6F41`, in normal bit order.
const fn x_pow_mod(n: u32) -> u32 {
    let mut r: u64 = 1;
    let mut i = 0;
    while i < n {
        r <<= 1;
        if r & (1 << 32) != 0 {
            r ^= 0x1_1EDC_6F41;
        }
        i += 1;
    }
    r as u32
}

/// The 33-bit reflected folding constant for `x^n mod P`: bit `j` holds the coefficient of
/// `x^(32 - j)`, the layout in which a carry-less product of two reflected operands lands one
/// position off, as the fold needs it.
const fn fold_constant(n: u32) -> u64 {
    (x_pow_mod(n).reverse_bits() as u64) << 1
}

/// The constants that fold a 16-byte lane forward by `d` bits: `(x^(d-32) mod P, x^(d+32)
/// mod P)`, multiplying the lane's high and low 64-bit halves respectively.
const fn fold_pair(d: u32) -> (u64, u64) {
    (fold_constant(d - 32), fold_constant(d + 32))
}

/// One lane forward by 16 bytes, one accumulator forward by 32 bytes, the four forward by 128.
const K_16B: (u64, u64) = fold_pair(128);
const K_32B: (u64, u64) = fold_pair(256);
const K_128B: (u64, u64) = fold_pair(1024);

/// `ceph_crc32c(seed, data)` by folding, or `None` where the CPU lacks AVX2, VPCLMULQDQ,
/// PCLMULQDQ or SSE4.2, or has AVX-512 (crc-fast's 512-bit fold is faster there), or `data`
/// is shorter than [`FOLD_MIN_LEN`].
#[inline]
pub fn crc32c(seed: u32, data: &[u8]) -> Option<u32> {
    if data.len() < FOLD_MIN_LEN || !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `available()` checked every feature the function enables, and the length.
        Some(unsafe { x86::fold(seed, data) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = seed;
        None
    }
}

/// Whether this CPU takes the fold: detected once, then one load.
#[inline]
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx2")
        && has!("vpclmulqdq")
        && has!("pclmulqdq")
        && has!("sse4.2")
        && !(has!("avx512vl") && has!("avx512f"))
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{K_128B, K_16B, K_32B};
    use std::arch::x86_64::*;

    /// `x` folded forward by the distance of the constants `k` (per 128-bit lane).
    #[inline(always)]
    unsafe fn fold_lane(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128(x, k, 0x01),
            _mm_clmulepi64_si128(x, k, 0x10),
        )
    }

    /// Both 128-bit lanes of `x` folded forward by the distance of `k`.
    #[inline(always)]
    unsafe fn fold_acc(x: __m256i, k: __m256i) -> __m256i {
        _mm256_xor_si256(
            _mm256_clmulepi64_epi128(x, k, 0x01),
            _mm256_clmulepi64_epi128(x, k, 0x10),
        )
    }

    #[inline(always)]
    unsafe fn broadcast(k: (u64, u64)) -> __m256i {
        _mm256_set_epi64x(k.1 as i64, k.0 as i64, k.1 as i64, k.0 as i64)
    }

    /// # Safety
    /// The CPU must support AVX2, VPCLMULQDQ, PCLMULQDQ and SSE4.2, and `data` must hold at
    /// least [`FOLD_MIN_LEN`](super::FOLD_MIN_LEN) bytes.
    #[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse4.2")]
    pub(super) unsafe fn fold(seed: u32, data: &[u8]) -> u32 {
        debug_assert!(data.len() >= super::FOLD_MIN_LEN);
        // Every load below reads 16 or 32 bytes at `at`, with `at + width <= data.len()`
        // checked by the loop conditions; `loadu` has no alignment requirement.
        let p = data.as_ptr();
        let load = |at: usize| _mm256_loadu_si256(p.add(at).cast::<__m256i>());
        let mut a0 = _mm256_xor_si256(
            load(0),
            _mm256_zextsi128_si256(_mm_cvtsi32_si128(seed as i32)),
        );
        let mut a1 = load(32);
        let mut a2 = load(64);
        let mut a3 = load(96);
        let mut at = 128;
        let k = broadcast(K_128B);
        while data.len() - at >= 128 {
            a0 = _mm256_xor_si256(fold_acc(a0, k), load(at));
            a1 = _mm256_xor_si256(fold_acc(a1, k), load(at + 32));
            a2 = _mm256_xor_si256(fold_acc(a2, k), load(at + 64));
            a3 = _mm256_xor_si256(fold_acc(a3, k), load(at + 96));
            at += 128;
        }
        let k = broadcast(K_32B);
        a1 = _mm256_xor_si256(a1, fold_acc(a0, k));
        a2 = _mm256_xor_si256(a2, fold_acc(a1, k));
        a3 = _mm256_xor_si256(a3, fold_acc(a2, k));
        let k = _mm_set_epi64x(K_16B.1 as i64, K_16B.0 as i64);
        let mut x = _mm_xor_si128(
            _mm256_extracti128_si256(a3, 1),
            fold_lane(_mm256_castsi256_si128(a3), k),
        );
        while data.len() - at >= 16 {
            x = _mm_xor_si128(
                fold_lane(x, k),
                _mm_loadu_si128(p.add(at).cast::<__m128i>()),
            );
            at += 16;
        }
        // `x` is congruent to all the input before `at`: its crc from a zero register,
        // continued over the rest, is the crc of the whole input.
        let crc = _mm_crc32_u64(0, _mm_cvtsi128_si64(x) as u64);
        let mut crc = _mm_crc32_u64(crc, _mm_extract_epi64(x, 1) as u64) as u32;
        for &b in &data[at..] {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// crc-fast's CRC-32/ISCSI (a separate implementation; `tests/wire.rs` checks
    /// `ceph_crc32c`, which takes this fold here, against a bitwise model of the definition).
    fn reference(seed: u32, data: &[u8]) -> u32 {
        let mut d = crc_fast::Digest::new_with_init_state(
            crc_fast::CrcAlgorithm::Crc32Iscsi,
            u64::from(seed),
        );
        d.update(data);
        !(d.finalize() as u32)
    }

    fn bytes(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn constants_match_the_published_ones() {
        // The CRC-32C 16-byte fold pair published with Intel's method (and used by Linux's
        // crc32c-pcl-intel and Chromium's crc32c): x^96 and x^160 mod P.
        assert_eq!(K_16B, (0x1_4cd0_0bd6, 0xf20c_0dfe));
    }

    /// Where the CPU lacks the features (or has AVX-512), the fold must decline every input.
    #[test]
    fn fold_matches_the_definition_at_every_length_and_offset() {
        let data = bytes(4096 + 300, 7);
        for len in FOLD_MIN_LEN..1200 {
            for off in [0, 1, 7] {
                for seed in [0, u32::MAX, 0xdead_beef] {
                    let d = &data[off..off + len];
                    let want = available().then(|| reference(seed, d));
                    assert_eq!(crc32c(seed, d), want, "len {len} off {off}");
                }
            }
        }
        for len in [4096, 4096 + 77, 4096 + 255] {
            let d = &data[3..3 + len];
            let want = available().then(|| reference(u32::MAX, d));
            assert_eq!(crc32c(u32::MAX, d), want, "len {len}");
        }
        let big = bytes(1 << 20, 11);
        let want = available().then(|| reference(0x1234_5678, &big));
        assert_eq!(crc32c(0x1234_5678, &big), want);
    }

    #[test]
    fn short_inputs_are_left_to_the_caller() {
        assert_eq!(crc32c(0, &[0u8; FOLD_MIN_LEN - 1]), None);
        assert_eq!(crc32c(0, &[]), None);
    }
}
