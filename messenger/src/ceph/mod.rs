//! Ceph monitor messages and maps, enough for a client to talk to a real `ceph-mon`
//! (Ceph 16.2 Pacific): [`mon_messages`] (`MMonGetVersion`/`Reply`, `MMonSubscribe`/`Ack`,
//! `MMonMap`, the head of `MOSDMap`) and [`monmap`] (decoding the `MonMap` blob), plus
//! [`MonSession`], a small blocking client used by the interop test and `ceph-mon-ping`.

pub mod mon_client;
pub mod mon_messages;
pub mod monmap;

pub use mon_client::MonSession;
pub use mon_messages::{
    MMonGetVersion, MMonGetVersionReply, MMonMap, MMonSubscribe, MMonSubscribeAck, MOsdMapHead,
    SubscribeItem, CEPH_MSG_MON_GET_VERSION, CEPH_MSG_MON_GET_VERSION_REPLY, CEPH_MSG_MON_MAP,
    CEPH_MSG_MON_SUBSCRIBE, CEPH_MSG_MON_SUBSCRIBE_ACK, CEPH_MSG_OSD_MAP, CEPH_SUBSCRIBE_ONETIME,
};
pub use monmap::{MonInfo, MonMap, Uuid};
