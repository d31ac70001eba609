//! # corewire-messenger
//!
//! Ceph-style messenger on msgr2.1. In progress: the wire layer ([`wire`]: banner, preamble,
//! frames, Ceph's little-endian encodings) is in place; sessions, policies, dispatchers and
//! sharding by peer land with the messenger issue.

pub mod wire;
