//! Intra-host shared-memory transport pieces: a sealed memfd region and SPSC byte rings over it.

pub mod region;
pub mod ring;
