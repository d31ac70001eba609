//! The cluster's messages, Ceph-like in name and type number, with simple little-endian
//! encodings in the front segment and object bytes in the data segment (zero-copy).

use bytes::Bytes;
use corewire_messenger::message::PRIO_HIGH;
use corewire_messenger::wire::WireError;
use corewire_messenger::{Message, MessagePayload};

/// `CEPH_MSG_OSD_OP`.
pub const MSG_OSD_OP: u16 = 42;
/// `CEPH_MSG_OSD_OPREPLY`.
pub const MSG_OSD_OPREPLY: u16 = 43;
/// `MSG_OSD_PING`.
pub const MSG_OSD_PING: u16 = 70;
/// `MSG_OSD_BOOT` (Ceph sends it to the monitor; here an OSD tells its peers it started).
pub const MSG_OSD_BOOT: u16 = 71;
/// `MSG_OSD_REPOP`.
pub const MSG_OSD_REPOP: u16 = 112;
/// `MSG_OSD_REPOPREPLY`.
pub const MSG_OSD_REPOPREPLY: u16 = 113;

/// `-EIO`, `-EXDEV` (op sent to an OSD that is not the object's primary).
pub const EIO: i32 = -5;
pub const EXDEV: i32 = -18;

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i32(self, v: i32) -> Self {
        self.u32(v as u32)
    }
    fn str(self, s: &str) -> Self {
        let mut e = self.u32(s.len() as u32);
        e.0.extend_from_slice(s.as_bytes());
        e
    }
    fn done(self) -> Bytes {
        self.0.into()
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated {
                what,
                need: n,
                have: self.0.len(),
            });
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(what, 4)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(what, 8)?.try_into().unwrap()))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        Ok(self.u32(what)? as i32)
    }
    fn str(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u32(what)? as usize;
        let b = self.take(what, n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::bad(what, "not UTF-8"))
    }
}

/// Client → primary: write `data` as `version` of `object` (MOSDOp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsdOp {
    pub tid: u64,
    pub object: String,
    pub version: u64,
    pub data: Bytes,
}

impl MessagePayload for OsdOp {
    const MSG_TYPE: u16 = MSG_OSD_OP;
    fn encode_payload(&self, m: &mut Message) {
        m.tid = self.tid;
        m.front = Enc::default().str(&self.object).u64(self.version).done();
        m.data = self.data.clone();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(OsdOp {
            tid: m.tid,
            object: d.str("object")?,
            version: d.u64("version")?,
            data: m.data.clone(),
        })
    }
}

/// Primary → client: the write is on every replica (`result` 0) or failed (MOSDOpReply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsdOpReply {
    pub tid: u64,
    pub object: String,
    pub version: u64,
    pub result: i32,
    /// The primary that answers.
    pub osd: u32,
}

impl MessagePayload for OsdOpReply {
    const MSG_TYPE: u16 = MSG_OSD_OPREPLY;
    fn encode_payload(&self, m: &mut Message) {
        m.tid = self.tid;
        m.front = Enc::default()
            .str(&self.object)
            .u64(self.version)
            .i32(self.result)
            .u32(self.osd)
            .done();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(OsdOpReply {
            tid: m.tid,
            object: d.str("object")?,
            version: d.u64("version")?,
            result: d.i32("result")?,
            osd: d.u32("osd")?,
        })
    }
}

/// Primary → replica: apply this write (MOSDRepOp). `tid` is the primary's rep tid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepOp {
    pub tid: u64,
    pub from: u32,
    pub object: String,
    pub version: u64,
    pub data: Bytes,
}

impl MessagePayload for RepOp {
    const MSG_TYPE: u16 = MSG_OSD_REPOP;
    fn encode_payload(&self, m: &mut Message) {
        m.tid = self.tid;
        m.front = Enc::default()
            .u32(self.from)
            .str(&self.object)
            .u64(self.version)
            .done();
        m.data = self.data.clone();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(RepOp {
            tid: m.tid,
            from: d.u32("from")?,
            object: d.str("object")?,
            version: d.u64("version")?,
            data: m.data.clone(),
        })
    }
}

/// Replica → primary: the write is applied (stored and renamed into place) (MOSDRepOpReply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepOpReply {
    pub tid: u64,
    pub from: u32,
    pub object: String,
    pub version: u64,
    pub result: i32,
}

impl MessagePayload for RepOpReply {
    const MSG_TYPE: u16 = MSG_OSD_REPOPREPLY;
    fn encode_payload(&self, m: &mut Message) {
        m.tid = self.tid;
        m.front = Enc::default()
            .u32(self.from)
            .str(&self.object)
            .u64(self.version)
            .i32(self.result)
            .done();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(RepOpReply {
            tid: m.tid,
            from: d.u32("from")?,
            object: d.str("object")?,
            version: d.u64("version")?,
            result: d.i32("result")?,
        })
    }
}

/// MOSDPing: `reply` false for a ping, true for its answer (same seq and stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub reply: bool,
    pub from: u32,
    pub seq: u64,
    pub stamp_ns: u64,
}

impl MessagePayload for Ping {
    const MSG_TYPE: u16 = MSG_OSD_PING;
    const PRIORITY: u16 = PRIO_HIGH;
    fn encode_payload(&self, m: &mut Message) {
        m.front = Enc::default()
            .u32(self.reply as u32)
            .u32(self.from)
            .u64(self.seq)
            .u64(self.stamp_ns)
            .done();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(Ping {
            reply: d.u32("op")? != 0,
            from: d.u32("from")?,
            seq: d.u64("seq")?,
            stamp_ns: d.u64("stamp")?,
        })
    }
}

/// An OSD (re)started: sent to every peer's cluster messenger at boot, so each peer learns
/// of the restart through the messenger (a new session over its old one: remote reset) even
/// when it has nothing to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    pub from: u32,
    pub pid: u32,
}

impl MessagePayload for Boot {
    const MSG_TYPE: u16 = MSG_OSD_BOOT;
    fn encode_payload(&self, m: &mut Message) {
        m.front = Enc::default().u32(self.from).u32(self.pid).done();
    }
    fn decode_payload(m: &Message) -> Result<Self, WireError> {
        let mut d = Dec(&m.front);
        Ok(Boot {
            from: d.u32("from")?,
            pid: d.u32("pid")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let op = OsdOp {
            tid: 7,
            object: "obj-1".into(),
            version: 3,
            data: Bytes::from_static(b"abc"),
        };
        assert_eq!(Message::encode(&op).decode::<OsdOp>().unwrap(), op);
        let r = RepOpReply {
            tid: 9,
            from: 2,
            object: "x".into(),
            version: 1,
            result: EIO,
        };
        assert_eq!(Message::encode(&r).decode::<RepOpReply>().unwrap(), r);
        let p = Ping {
            reply: true,
            from: 1,
            seq: 5,
            stamp_ns: 6,
        };
        assert_eq!(Message::encode(&p).decode::<Ping>().unwrap(), p);
        // Truncated input is an error, not a panic.
        let mut m = Message::encode(&op);
        m.front = m.front.slice(..6);
        assert!(m.decode::<OsdOp>().is_err());
        assert!(Message::encode(&p).decode::<Boot>().is_err());
    }
}
