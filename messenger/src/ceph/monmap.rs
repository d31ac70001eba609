//! The monitor map (`mon/MonMap.{h,cc}`), as a Pacific monitor encodes it for a peer with
//! `SERVER_NAUTILUS` (struct v6..=9):
//!
//! ```text
//! ENCODE_START(9, 6)
//!   uuid fsid (16 raw bytes), u32 epoch, utime last_changed, utime created,
//!   mon_feature_t persistent_features, optional_features   (each ENCODE_START(1,1) u64)
//!   map<string, mon_info_t> mon_info
//!   vector<string> ranks
//!   u8 min_mon_release                                       (v7+)
//!   set<i32> removed_ranks, u8 election strategy             (v8+)
//!   set<string> disallowed_leaders, bool stretch_mode_enabled,
//!   string tiebreaker_mon, set<string> stretch_marked_down_mons  (v9+)
//! mon_info_t: ENCODE_START(5, 1): string name, entity_addrvec_t public_addrs,
//!   u16 priority (v2+), u16 weight (v4+), map<string,string> crush_loc (v5+)
//! ```
//!
//! Older layouts (v < 6, pre-Nautilus) are refused with an error.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::wire::{Decoder, Encoder, EntityAddrVec, UTime, WireError, WireResult};

/// `uuid_d`: 16 raw bytes, printed in the usual 8-4-4-4-12 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = WireError;
    fn from_str(s: &str) -> WireResult<Self> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.is_ascii() {
            return Err(WireError::bad("uuid", format!("{s:?} is not a uuid")));
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|e| WireError::bad("uuid", format!("{s:?}: {e}")))?;
        }
        Ok(Uuid(out))
    }
}

/// One monitor of the map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonInfo {
    pub name: String,
    pub public_addrs: EntityAddrVec,
    pub priority: u16,
    pub weight: u16,
    pub crush_loc: BTreeMap<String, String>,
}

/// The fields of a `MonMap` this crate uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonMap {
    pub fsid: Uuid,
    pub epoch: u32,
    pub last_changed: UTime,
    pub created: UTime,
    pub persistent_features: u64,
    pub optional_features: u64,
    /// By name.
    pub mons: BTreeMap<String, MonInfo>,
    /// Monitor names by rank.
    pub ranks: Vec<String>,
    /// `ceph_release_t` (16 = pacific); 0 when the encoding predates it.
    pub min_mon_release: u8,
}

fn strings(d: &mut Decoder<'_>) -> WireResult<Vec<String>> {
    let n = d.count("string list", 4)?;
    (0..n).map(|_| d.string()).collect()
}

fn put_strings<'s>(e: &mut Encoder, v: impl ExactSizeIterator<Item = &'s String>) {
    e.put_u32(v.len() as u32);
    for s in v {
        e.put_str(s);
    }
}

fn feature(d: &mut Decoder<'_>) -> WireResult<u64> {
    d.decode_versioned("mon_feature_t", 1, |_, d| d.u64())
}

impl MonInfo {
    fn decode(d: &mut Decoder<'_>) -> WireResult<Self> {
        d.decode_versioned("mon_info_t", 5, |v, d| {
            let name = d.string()?;
            let public_addrs = d.get()?;
            let priority = if v >= 2 { d.u16()? } else { 0 };
            let weight = if v >= 4 { d.u16()? } else { 0 };
            let mut crush_loc = BTreeMap::new();
            if v >= 5 {
                let n = d.count("crush_loc", 8)?;
                for _ in 0..n {
                    let k = d.string()?;
                    crush_loc.insert(k, d.string()?);
                }
            }
            Ok(Self {
                name,
                public_addrs,
                priority,
                weight,
                crush_loc,
            })
        })
    }

    fn encode(&self, e: &mut Encoder) {
        e.encode_versioned(5, 1, |e| {
            e.put_str(&self.name)
                .put(&self.public_addrs)
                .put_u16(self.priority)
                .put_u16(self.weight)
                .put_u32(self.crush_loc.len() as u32);
            for (k, v) in &self.crush_loc {
                e.put_str(k).put_str(v);
            }
        });
    }
}

impl MonMap {
    /// Decodes an encoded monmap (the blob of an `MMonMap`, or a `monmaptool` file).
    pub fn decode(buf: &[u8]) -> WireResult<Self> {
        let mut d = Decoder::new(buf);
        d.decode_versioned("MonMap", 9, |v, d| {
            if v < 6 {
                return Err(WireError::bad(
                    "MonMap",
                    format!("struct_v {v}: pre-Nautilus encodings are not supported"),
                ));
            }
            let fsid = Uuid(d.array("fsid")?);
            let epoch = d.u32()?;
            let last_changed = d.get()?;
            let created = d.get()?;
            let persistent_features = feature(d)?;
            let optional_features = feature(d)?;
            let n = d.count("mon_info", 4 + 6)?;
            let mut mons = BTreeMap::new();
            for _ in 0..n {
                let k = d.string()?;
                mons.insert(k, MonInfo::decode(d)?);
            }
            let ranks = strings(d)?;
            let min_mon_release = if v >= 7 { d.u8()? } else { 0 };
            Ok(Self {
                fsid,
                epoch,
                last_changed,
                created,
                persistent_features,
                optional_features,
                mons,
                ranks,
                min_mon_release,
            })
        })
    }

    /// Encodes as a Pacific monitor does (v9, compat 6), with the v8/v9 fields empty.
    pub fn encode(&self) -> bytes::Bytes {
        let mut e = Encoder::new();
        e.encode_versioned(9, 6, |e| {
            e.put_raw(&self.fsid.0)
                .put_u32(self.epoch)
                .put(&self.last_changed)
                .put(&self.created);
            for f in [self.persistent_features, self.optional_features] {
                e.encode_versioned(1, 1, |e| {
                    e.put_u64(f);
                });
            }
            e.put_u32(self.mons.len() as u32);
            for (k, m) in &self.mons {
                e.put_str(k);
                m.encode(e);
            }
            put_strings(e, self.ranks.iter());
            e.put_u8(self.min_mon_release);
            e.put_u32(0).put_u8(1); // removed_ranks, strategy CLASSIC
            e.put_u32(0).put_bool(false).put_str("").put_u32(0);
        });
        e.finish()
    }

    /// The monitor of rank `rank`.
    pub fn mon_by_rank(&self, rank: usize) -> Option<&MonInfo> {
        self.ranks.get(rank).and_then(|n| self.mons.get(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EntityAddr, EntityAddrType};

    fn sample() -> MonMap {
        let v2 = EntityAddr::msgr2("127.0.0.1:3300".parse().unwrap(), 0);
        let v1 = EntityAddr::new(EntityAddrType::Legacy, "127.0.0.1:6789".parse().unwrap(), 0);
        let a = MonInfo {
            name: "a".into(),
            public_addrs: EntityAddrVec::new(vec![v2, v1]),
            ..Default::default()
        };
        MonMap {
            fsid: "ec45e4f8-073a-4a6b-aa0f-14c8a6de1530".parse().unwrap(),
            epoch: 1,
            last_changed: UTime::new(1_700_000_000, 5),
            created: UTime::new(1_700_000_000, 5),
            persistent_features: 0xff,
            optional_features: 0,
            mons: [("a".to_owned(), a)].into(),
            ranks: vec!["a".into()],
            min_mon_release: 16,
        }
    }

    #[test]
    fn uuid_text_round_trip() {
        let s = "ec45e4f8-073a-4a6b-aa0f-14c8a6de1530";
        let u: Uuid = s.parse().unwrap();
        assert_eq!(u.0[0], 0xec);
        assert_eq!(u.to_string(), s);
        assert!("nope".parse::<Uuid>().is_err());
    }

    #[test]
    fn monmap_round_trip() {
        let m = sample();
        let b = m.encode();
        assert_eq!(&b[..2], &[9, 6]);
        let d = MonMap::decode(&b).unwrap();
        assert_eq!(d, m);
        assert_eq!(
            d.mon_by_rank(0)
                .unwrap()
                .public_addrs
                .msgr2_addr()
                .unwrap()
                .addr,
            Some("127.0.0.1:3300".parse().unwrap())
        );
    }

    #[test]
    fn monmap_truncated_and_old_are_errors() {
        let b = sample().encode();
        for len in [0, 1, 5, 6, 20, b.len() - 1] {
            assert!(MonMap::decode(&b[..len]).is_err(), "len {len}");
        }
        let mut old = b.to_vec();
        old[0] = 5;
        old[1] = 3;
        assert!(MonMap::decode(&old).is_err());
    }
}
