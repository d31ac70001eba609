//! The msgr2.1 session protocol. Phase 1: the handshake ([`handshake`]); session reconnect,
//! retry and reset (RECONNECT / RECONNECT_OK / RETRY / RESET) come in phase 2.

pub mod handshake;
