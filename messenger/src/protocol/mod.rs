//! The msgr2.1 session protocol: the handshake ([`handshake`]) and the rules for resuming,
//! retrying, resetting and racing sessions ([`reconnect`]).

pub mod handshake;
pub(crate) mod reconnect;
