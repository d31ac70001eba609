//! Client <-> monitor messages (`messages/MMonGetVersion.h`, `MMonGetVersionReply.h`,
//! `MMonSubscribe.h`, `MMonSubscribeAck.h`, `MMonMap.h`, `MOSDMap.h`), front segment only.
//!
//! Type numbers from `include/ceph_fs.h`: `CEPH_MSG_MON_MAP` 4, `_MON_SUBSCRIBE` 15,
//! `_MON_SUBSCRIBE_ACK` 16, `_MON_GET_VERSION` 19, `_MON_GET_VERSION_REPLY` 20, `_OSD_MAP` 41.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::monmap::Uuid;
use crate::message::{Message, MessagePayload};
use crate::wire::{Decoder, Encoder, WireError};

pub const CEPH_MSG_MON_MAP: u16 = 4;
pub const CEPH_MSG_MON_SUBSCRIBE: u16 = 15;
pub const CEPH_MSG_MON_SUBSCRIBE_ACK: u16 = 16;
pub const CEPH_MSG_MON_GET_VERSION: u16 = 19;
pub const CEPH_MSG_MON_GET_VERSION_REPLY: u16 = 20;
pub const CEPH_MSG_OSD_MAP: u16 = 41;

/// `CEPH_SUBSCRIBE_ONETIME`: send the map once, do not keep the subscription.
pub const CEPH_SUBSCRIBE_ONETIME: u8 = 1;

fn front(msg: &Message) -> Decoder<'_> {
    Decoder::from_bytes(&msg.front)
}

/// `MMonGetVersion`: which map's version we ask for ("osdmap", "mdsmap", "fsmap"...);
/// `handle` comes back in the reply (Ceph's `MonClient` uses a counter; the header tid is
/// also set to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MMonGetVersion {
    pub handle: u64,
    pub what: String,
}

impl MessagePayload for MMonGetVersion {
    const MSG_TYPE: u16 = CEPH_MSG_MON_GET_VERSION;
    const VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 0;

    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_u64(self.handle).put_str(&self.what);
        msg.front = e.finish();
        msg.tid = self.handle;
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        let mut d = front(msg);
        Ok(Self {
            handle: d.u64()?,
            what: d.string()?,
        })
    }
}

/// `MMonGetVersionReply` (head version 2): the handle of the request, the newest and (v2)
/// the oldest version of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MMonGetVersionReply {
    pub handle: u64,
    pub version: u64,
    pub oldest_version: u64,
}

impl MessagePayload for MMonGetVersionReply {
    const MSG_TYPE: u16 = CEPH_MSG_MON_GET_VERSION_REPLY;
    const VERSION: u16 = 2;
    const COMPAT_VERSION: u16 = 0;

    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_u64(self.handle)
            .put_u64(self.version)
            .put_u64(self.oldest_version);
        msg.front = e.finish();
        msg.tid = self.handle;
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        let mut d = front(msg);
        let handle = d.u64()?;
        let version = d.u64()?;
        let oldest_version = if msg.version >= 2 { d.u64()? } else { 0 };
        Ok(Self {
            handle,
            version,
            oldest_version,
        })
    }
}

/// `ceph_mon_subscribe_item` (packed): the first epoch wanted and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeItem {
    pub start: u64,
    pub flags: u8,
}

/// `MMonSubscribe` (head version 3, compat 1; the `SUBSCRIBE2` encoding):
/// `map<string, ceph_mon_subscribe_item>` then the hostname.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MMonSubscribe {
    pub what: BTreeMap<String, SubscribeItem>,
    pub hostname: String,
}

impl MMonSubscribe {
    /// Adds a subscription to `name` from epoch `start`.
    pub fn with(mut self, name: &str, start: u64, flags: u8) -> Self {
        self.what
            .insert(name.to_owned(), SubscribeItem { start, flags });
        self
    }
}

impl MessagePayload for MMonSubscribe {
    const MSG_TYPE: u16 = CEPH_MSG_MON_SUBSCRIBE;
    const VERSION: u16 = 3;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_u32(self.what.len() as u32);
        for (k, v) in &self.what {
            e.put_str(k).put_u64(v.start).put_u8(v.flags);
        }
        e.put_str(&self.hostname);
        msg.front = e.finish();
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        let mut d = front(msg);
        let n = d.count("subscribe map", 4 + 9)?;
        let mut what = BTreeMap::new();
        for _ in 0..n {
            let k = d.string()?;
            let start = d.u64()?;
            let flags = d.u8()?;
            what.insert(k, SubscribeItem { start, flags });
        }
        let hostname = if msg.version >= 3 {
            d.string()?
        } else {
            String::new()
        };
        Ok(Self { what, hostname })
    }
}

/// `MMonSubscribeAck` (only sent to peers without `MON_STATEFUL_SUB`): renew interval and
/// the fsid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MMonSubscribeAck {
    pub interval: u32,
    pub fsid: Uuid,
}

impl MessagePayload for MMonSubscribeAck {
    const MSG_TYPE: u16 = CEPH_MSG_MON_SUBSCRIBE_ACK;

    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_u32(self.interval).put_raw(&self.fsid.0);
        msg.front = e.finish();
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        let mut d = front(msg);
        Ok(Self {
            interval: d.u32()?,
            fsid: Uuid(d.array("fsid")?),
        })
    }
}

/// `MMonMap`: the encoded monmap as a `bufferlist`; decode it with
/// [`super::MonMap::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MMonMap {
    pub monmap: Bytes,
}

impl MessagePayload for MMonMap {
    const MSG_TYPE: u16 = CEPH_MSG_MON_MAP;
    const COMPAT_VERSION: u16 = 0;

    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_blob(&self.monmap);
        msg.front = e.finish();
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        Ok(Self {
            monmap: front(msg).blob_bytes()?,
        })
    }
}

/// The head of `MOSDMap`: fsid, the epochs of the incremental and full maps it carries, and
/// (v2+) the oldest and newest epochs the monitor has. The maps themselves are not decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MOsdMapHead {
    pub fsid: Uuid,
    pub incremental_epochs: Vec<u32>,
    pub full_epochs: Vec<u32>,
    pub oldest_map: u32,
    pub newest_map: u32,
}

impl MOsdMapHead {
    fn epochs(d: &mut Decoder<'_>) -> Result<Vec<u32>, WireError> {
        let n = d.count("osdmap epochs", 8)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(d.u32()?);
            d.blob()?;
        }
        Ok(out)
    }
}

impl MessagePayload for MOsdMapHead {
    const MSG_TYPE: u16 = CEPH_MSG_OSD_MAP;
    const VERSION: u16 = 4;
    const COMPAT_VERSION: u16 = 1;

    /// Encodes the head with empty map bodies (for tests).
    fn encode_payload(&self, msg: &mut Message) {
        let mut e = Encoder::new();
        e.put_raw(&self.fsid.0);
        for list in [&self.incremental_epochs, &self.full_epochs] {
            e.put_u32(list.len() as u32);
            for ep in list {
                e.put_u32(*ep).put_blob(&[]);
            }
        }
        e.put_u32(self.oldest_map).put_u32(self.newest_map);
        msg.front = e.finish();
    }

    fn decode_payload(msg: &Message) -> Result<Self, WireError> {
        let mut d = front(msg);
        let fsid = Uuid(d.array("fsid")?);
        let incremental_epochs = Self::epochs(&mut d)?;
        let full_epochs = Self::epochs(&mut d)?;
        let (oldest_map, newest_map) = if msg.version >= 2 {
            (d.u32()?, d.u32()?)
        } else {
            (0, 0)
        };
        Ok(Self {
            fsid,
            incremental_epochs,
            full_epochs,
            oldest_map,
            newest_map,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: MessagePayload + PartialEq + std::fmt::Debug>(v: &T) -> Message {
        let m = Message::encode(v);
        assert_eq!(m.msg_type, T::MSG_TYPE);
        assert_eq!(&m.decode::<T>().unwrap(), v);
        m
    }

    #[test]
    fn get_version_layout_and_round_trip() {
        let m = round_trip(&MMonGetVersion {
            handle: 7,
            what: "osdmap".into(),
        });
        assert_eq!(m.msg_type, 0x13);
        assert_eq!(m.tid, 7);
        assert_eq!(
            &m.front[..],
            &[7, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, b'o', b's', b'd', b'm', b'a', b'p']
        );
        let r = round_trip(&MMonGetVersionReply {
            handle: 7,
            version: 12,
            oldest_version: 1,
        });
        assert_eq!(r.msg_type, 0x14);
        assert_eq!(r.front.len(), 24);
    }

    #[test]
    fn get_version_reply_v1_has_no_oldest() {
        let mut m = Message::encode(&MMonGetVersionReply {
            handle: 1,
            version: 5,
            oldest_version: 3,
        });
        m.version = 1;
        m.front = m.front.slice(..16);
        let r = m.decode::<MMonGetVersionReply>().unwrap();
        assert_eq!((r.version, r.oldest_version), (5, 0));
    }

    #[test]
    fn subscribe_layout_and_round_trip() {
        let s =
            MMonSubscribe::default()
                .with("monmap", 0, 0)
                .with("osdmap", 1, CEPH_SUBSCRIBE_ONETIME);
        let m = round_trip(&s);
        assert_eq!((m.version, m.compat_version), (3, 1));
        // count, then per item: string, le64 start, u8 flags; then hostname.
        let f = &m.front[..];
        assert_eq!(&f[..4], &2u32.to_le_bytes());
        assert_eq!(&f[4..14], b"\x06\x00\x00\x00monmap");
        assert_eq!(f.len(), 4 + 2 * (4 + 6 + 9) + 4);
    }

    #[test]
    fn subscribe_ack_monmap_and_osdmap_head_round_trip() {
        round_trip(&MMonSubscribeAck {
            interval: 300,
            fsid: Uuid([9; 16]),
        });
        round_trip(&MMonMap {
            monmap: Bytes::from_static(b"\x01\x02\x03"),
        });
        round_trip(&MOsdMapHead {
            fsid: Uuid([3; 16]),
            incremental_epochs: vec![],
            full_epochs: vec![1, 2],
            oldest_map: 1,
            newest_map: 2,
        });
    }

    #[test]
    fn truncated_payloads_are_errors() {
        for len in 0..18 {
            let mut m = Message::encode(&MMonGetVersion {
                handle: 7,
                what: "osdmap".into(),
            });
            m.front = m.front.slice(..len);
            assert!(m.decode::<MMonGetVersion>().is_err(), "len {len}");
        }
        let mut m = Message::encode(&MMonMap {
            monmap: Bytes::from_static(b"abc"),
        });
        m.front = m.front.slice(..5);
        assert!(m.decode::<MMonMap>().is_err());
    }
}
