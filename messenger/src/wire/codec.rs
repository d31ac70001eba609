//! Ceph's little-endian encoding (`include/encoding.h`, `include/denc.h`).
//!
//! * integers are little-endian, `bool` is one byte (any non-zero decodes as true);
//! * `std::string` and `bufferlist` are a `u32` length followed by the bytes;
//! * `std::vector<T>` / `std::map<K, V>` are a `u32` count followed by the elements;
//! * `utime_t` / `ceph_timespec` are `u32 sec, u32 nsec`;
//! * versioned structs (`ENCODE_START(v, compat, bl)`) are `u8 struct_v, u8 struct_compat,
//!   u32 struct_len` followed by `struct_len` bytes of body.
//!
//! [`Decoder`] is bounds-checked: it never panics, and it never allocates more than the
//! remaining input could justify (lengths and counts are checked against the remaining
//! bytes before any allocation).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{WireError, WireResult};

/// A value with a Ceph encoding.
pub trait Encode {
    /// Appends the encoding of `self`.
    fn encode(&self, enc: &mut Encoder);
}

/// A value with a Ceph decoding.
pub trait Decode: Sized {
    /// The fewest bytes any encoding of `Self` takes; bounds element counts of
    /// sequences before allocating.
    const MIN_ENCODED_LEN: usize = 1;

    /// Decodes one value.
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self>;
}

/// Appends Ceph encodings to a [`BytesMut`].
#[derive(Debug, Default)]
pub struct Encoder {
    buf: BytesMut,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty encoder with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(cap),
        }
    }

    /// An encoder appending to `buf`.
    pub fn from_buf(buf: BytesMut) -> Self {
        Self { buf }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> BytesMut {
        self.buf
    }

    /// The written bytes, frozen.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    /// Appends any encodable value.
    pub fn put<T: Encode + ?Sized>(&mut self, v: &T) -> &mut Self {
        v.encode(self);
        self
    }

    pub fn put_u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }
    pub fn put_u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16_le(v);
        self
    }
    pub fn put_u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32_le(v);
        self
    }
    pub fn put_u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64_le(v);
        self
    }
    pub fn put_i8(&mut self, v: i8) -> &mut Self {
        self.buf.put_i8(v);
        self
    }
    pub fn put_i16(&mut self, v: i16) -> &mut Self {
        self.buf.put_i16_le(v);
        self
    }
    pub fn put_i32(&mut self, v: i32) -> &mut Self {
        self.buf.put_i32_le(v);
        self
    }
    pub fn put_i64(&mut self, v: i64) -> &mut Self {
        self.buf.put_i64_le(v);
        self
    }
    pub fn put_bool(&mut self, v: bool) -> &mut Self {
        self.buf.put_u8(v as u8);
        self
    }

    /// Raw bytes, no length prefix.
    pub fn put_raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A `bufferlist`: `u32` length then the bytes.
    ///
    /// # Panics
    /// If `v` is 4 GiB or longer, which no Ceph encoding can carry.
    pub fn put_blob(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("bufferlist longer than u32::MAX");
        self.put_u32(len);
        self.put_raw(v)
    }

    /// A `std::string`: `u32` length then the UTF-8 bytes.
    pub fn put_str(&mut self, v: &str) -> &mut Self {
        self.put_blob(v.as_bytes())
    }

    /// A sequence with a `u32` count.
    pub fn put_seq<'x, T, I>(&mut self, items: I) -> &mut Self
    where
        T: Encode + 'x,
        I: IntoIterator<Item = &'x T>,
        I::IntoIter: ExactSizeIterator,
    {
        let it = items.into_iter();
        let n = u32::try_from(it.len()).expect("sequence longer than u32::MAX");
        self.put_u32(n);
        for item in it {
            item.encode(self);
        }
        self
    }

    /// A versioned struct (`ENCODE_START(v, compat)` ... `ENCODE_FINISH`): writes
    /// `struct_v`, `struct_compat` and the `u32` body length, which is patched after `body`
    /// has written the fields.
    pub fn encode_versioned<F>(&mut self, v: u8, compat: u8, body: F) -> &mut Self
    where
        F: FnOnce(&mut Encoder),
    {
        self.put_u8(v).put_u8(compat);
        let len_at = self.buf.len();
        self.put_u32(0);
        let start = self.buf.len();
        body(self);
        let len = u32::try_from(self.buf.len() - start).expect("struct longer than u32::MAX");
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self
    }
}

/// Bounds-checked reader of Ceph encodings over a byte slice.
///
/// Built with [`Decoder::from_bytes`], blobs can be taken as zero-copy [`Bytes`] slices
/// of the source.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The `Bytes` that `buf` lies in, when known, for zero-copy blobs.
    source: Option<&'a Bytes>,
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            source: None,
        }
    }

    /// A decoder over `bytes` whose blobs are slices of it, not copies.
    pub fn from_bytes(bytes: &'a Bytes) -> Self {
        Self {
            buf: bytes,
            pos: 0,
            source: Some(bytes),
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Errors unless every byte was read.
    pub fn expect_end(&self, what: &'static str) -> WireResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(WireError::bad(
                what,
                format!("{} trailing bytes", self.remaining()),
            ))
        }
    }

    /// Reads `n` raw bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> WireResult<&'a [u8]> {
        let have = self.remaining();
        if n > have {
            return Err(WireError::Truncated {
                what,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> WireResult<()> {
        self.take(n, what).map(|_| ())
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> WireResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> WireResult<u8> {
        Ok(self.array::<1>("u8")?[0])
    }
    pub fn u16(&mut self) -> WireResult<u16> {
        self.array("u16").map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> WireResult<u32> {
        self.array("u32").map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> WireResult<u64> {
        self.array("u64").map(u64::from_le_bytes)
    }
    pub fn i8(&mut self) -> WireResult<i8> {
        self.array("i8").map(i8::from_le_bytes)
    }
    pub fn i16(&mut self) -> WireResult<i16> {
        self.array("i16").map(i16::from_le_bytes)
    }
    pub fn i32(&mut self) -> WireResult<i32> {
        self.array("i32").map(i32::from_le_bytes)
    }
    pub fn i64(&mut self) -> WireResult<i64> {
        self.array("i64").map(i64::from_le_bytes)
    }
    /// A `bool`: one byte, any non-zero value is true (as Ceph decodes it).
    pub fn bool(&mut self) -> WireResult<bool> {
        Ok(self.array::<1>("bool")?[0] != 0)
    }

    /// Any decodable value.
    pub fn get<T: Decode>(&mut self) -> WireResult<T> {
        T::decode(self)
    }

    /// A `u32` length, checked against the remaining input.
    fn len_prefix(&mut self, what: &'static str) -> WireResult<usize> {
        let len = self.u32()? as usize;
        let have = self.remaining();
        if len > have {
            return Err(WireError::Truncated {
                what,
                need: len,
                have,
            });
        }
        Ok(len)
    }

    /// A `bufferlist` as a borrowed slice.
    pub fn blob(&mut self) -> WireResult<&'a [u8]> {
        let len = self.len_prefix("bufferlist")?;
        self.take(len, "bufferlist")
    }

    /// A `bufferlist` as `Bytes`: a slice of the source when built with
    /// [`Decoder::from_bytes`], else a copy.
    pub fn blob_bytes(&mut self) -> WireResult<Bytes> {
        let start_pos = self.pos;
        let s = self.blob()?;
        Ok(match self.source {
            Some(src) => {
                let start = start_pos + 4;
                src.slice(start..start + s.len())
            }
            None => Bytes::copy_from_slice(s),
        })
    }

    /// A `std::string`, which must be UTF-8.
    pub fn string(&mut self) -> WireResult<String> {
        let len = self.len_prefix("string")?;
        let s = self.take(len, "string")?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|e| WireError::bad("string", e.to_string()))
    }

    /// A `u32` element count, checked so that `count * min_len` fits in the remaining input.
    pub fn count(&mut self, what: &'static str, min_len: usize) -> WireResult<usize> {
        let n = self.u32()? as usize;
        let need = n.saturating_mul(min_len.max(1));
        let have = self.remaining();
        if need > have {
            return Err(WireError::Truncated { what, need, have });
        }
        Ok(n)
    }

    /// A `std::vector<T>`.
    pub fn vec<T: Decode>(&mut self) -> WireResult<Vec<T>> {
        let n = self.count("vector", T::MIN_ENCODED_LEN)?;
        // `n` is bounded by the input; still grow rather than trust it fully.
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(T::decode(self)?);
        }
        Ok(v)
    }

    /// A `std::map<K, V>`.
    pub fn map<K: Decode + Ord, V: Decode>(&mut self) -> WireResult<BTreeMap<K, V>> {
        let n = self.count("map", K::MIN_ENCODED_LEN + V::MIN_ENCODED_LEN)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = K::decode(self)?;
            let v = V::decode(self)?;
            m.insert(k, v);
        }
        Ok(m)
    }

    /// A versioned struct (`DECODE_START(max_understood)` ... `DECODE_FINISH`).
    ///
    /// Reads `struct_v`, `struct_compat` and the `u32` body length; fails with
    /// [`WireError::UnsupportedVersion`] when `struct_compat > max_understood`; runs `body`
    /// with `struct_v` and a decoder confined to the body, then skips any body bytes it did
    /// not read (fields added by newer encoders).
    pub fn decode_versioned<T, F>(
        &mut self,
        what: &'static str,
        max_understood: u8,
        body: F,
    ) -> WireResult<T>
    where
        F: FnOnce(u8, &mut Decoder<'a>) -> WireResult<T>,
    {
        let struct_v = self.u8()?;
        let compat = self.u8()?;
        if compat > max_understood {
            return Err(WireError::UnsupportedVersion {
                what,
                v: compat,
                max: max_understood,
            });
        }
        let len = self.len_prefix(what)?;
        let start = self.pos;
        self.pos += len;
        let mut inner = Decoder {
            buf: &self.buf[..start + len],
            pos: start,
            source: self.source,
        };
        body(struct_v, &mut inner)
    }
}

macro_rules! int_codec {
    ($($t:ty => $put:ident, $get:ident;)*) => {$(
        impl Encode for $t {
            fn encode(&self, enc: &mut Encoder) {
                enc.$put(*self);
            }
        }
        impl Decode for $t {
            const MIN_ENCODED_LEN: usize = std::mem::size_of::<$t>();
            fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
                dec.$get()
            }
        }
    )*};
}

int_codec! {
    u8 => put_u8, u8;
    u16 => put_u16, u16;
    u32 => put_u32, u32;
    u64 => put_u64, u64;
    i8 => put_i8, i8;
    i16 => put_i16, i16;
    i32 => put_i32, i32;
    i64 => put_i64, i64;
    bool => put_bool, bool;
}

impl Encode for str {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_str(self);
    }
}
impl Encode for String {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_str(self);
    }
}
impl Decode for String {
    const MIN_ENCODED_LEN: usize = 4;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.string()
    }
}

impl Encode for [u8] {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_blob(self);
    }
}
impl Encode for Bytes {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_blob(self);
    }
}
impl Decode for Bytes {
    const MIN_ENCODED_LEN: usize = 4;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.blob_bytes()
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_seq(self.iter());
    }
}
impl<T: Decode> Decode for Vec<T> {
    const MIN_ENCODED_LEN: usize = 4;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.vec()
    }
}

impl<K: Encode, V: Encode> Encode for BTreeMap<K, V> {
    fn encode(&self, enc: &mut Encoder) {
        let n = u32::try_from(self.len()).expect("map longer than u32::MAX");
        enc.put_u32(n);
        for (k, v) in self {
            k.encode(enc);
            v.encode(enc);
        }
    }
}
impl<K: Decode + Ord, V: Decode> Decode for BTreeMap<K, V> {
    const MIN_ENCODED_LEN: usize = 4;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        dec.map()
    }
}

/// Ceph's `utime_t`, also the layout of `ceph_timespec`: `u32 sec, u32 nsec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UTime {
    pub sec: u32,
    pub nsec: u32,
}

/// `struct ceph_timespec` has the same encoding as `utime_t`.
pub type CephTimespec = UTime;

impl UTime {
    pub const fn new(sec: u32, nsec: u32) -> Self {
        Self { sec, nsec }
    }

    /// The current wall-clock time (seconds wrap like Ceph's `__u32` field).
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Time since the Unix epoch.
    pub fn as_duration(&self) -> Duration {
        Duration::new(u64::from(self.sec), 0) + Duration::from_nanos(u64::from(self.nsec))
    }
}

impl From<SystemTime> for UTime {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            sec: d.as_secs() as u32,
            nsec: d.subsec_nanos(),
        }
    }
}

impl Encode for UTime {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u32(self.sec).put_u32(self.nsec);
    }
}
impl Decode for UTime {
    const MIN_ENCODED_LEN: usize = 8;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        Ok(Self {
            sec: dec.u32()?,
            nsec: dec.u32()?,
        })
    }
}
