//! The size of each core's zero-copy pool: a process-wide setting, read when a core opens
//! its RDMA resources (as [`crate::rdma::dispatch`] is).
//!
//! The per-connection share of the receive budget is [`EndpointConfig::receive_slabs`]
//! (`crate::EndpointConfig`): one connection reserves at most that many slabs of its core's
//! [`RdmaPoolConfig::rx_slabs`], and a connection that finds none left goes without receive
//! zero-copy (its peer's large payloads come by SEND, copied) rather than failing.

use std::sync::{Mutex, PoisonError};

use crate::error::{Result, TransportError};

/// Size of one receive slab: the largest single RDMA WRITE a core accepts.
pub const SLAB_BYTES: usize = 1 << 20;
/// Chunk sizes of the send pool's four classes (the counts are [`RdmaPoolConfig::tx_chunks`]).
pub const TX_CHUNK_BYTES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
/// Most slabs a core may map (4 GiB of receive area).
pub const MAX_RX_SLABS: u32 = 4096;
/// Most chunks in one send class.
pub const MAX_TX_CHUNKS: u32 = 4096;

/// How much registered memory each core's zero-copy pool maps, and so how many large
/// payloads can be in flight per core.
///
/// Set it with [`set_pool_config`] before the runtime's cores first use RDMA; cores that
/// already opened their resources keep their pool. Defaults: 46 MiB of send chunks and
/// 32 MiB of receive slabs per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaPoolConfig {
    /// Receive slabs of [`SLAB_BYTES`] per core: the budget connections reserve their
    /// advertised buffers from (`EndpointConfig::receive_slabs` each). Default: 32, so four
    /// connections at the default 8 slabs take the whole budget; a core serving more
    /// peers that send large payloads needs more. 0 turns receive zero-copy off on every
    /// core.
    pub rx_slabs: u32,
    /// Send chunks per class of [`TX_CHUNK_BYTES`] (`Endpoint::alloc` hands them out; when a
    /// class is empty, `alloc` falls back to the heap and the payload is copied). Default:
    /// `[32, 16, 8, 8]` (2 + 4 + 8 + 32 MiB).
    pub tx_chunks: [u32; 4],
}

impl Default for RdmaPoolConfig {
    fn default() -> Self {
        RdmaPoolConfig {
            rx_slabs: 32,
            tx_chunks: [32, 16, 8, 8],
        }
    }
}

impl RdmaPoolConfig {
    /// Checks the bounds ([`MAX_RX_SLABS`], [`MAX_TX_CHUNKS`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(TransportError::Unavailable { what });
        if self.rx_slabs > MAX_RX_SLABS {
            return bad(format!(
                "rdma pool: {} receive slabs per core, at most {MAX_RX_SLABS}",
                self.rx_slabs
            ));
        }
        if let Some(n) = self.tx_chunks.iter().find(|&&n| n > MAX_TX_CHUNKS) {
            return bad(format!(
                "rdma pool: {n} send chunks in one class, at most {MAX_TX_CHUNKS}"
            ));
        }
        Ok(())
    }

    /// Bytes of the send area.
    pub fn tx_bytes(&self) -> usize {
        TX_CHUNK_BYTES
            .iter()
            .zip(self.tx_chunks)
            .map(|(&size, n)| size * n as usize)
            .sum()
    }

    /// Bytes of the receive area.
    pub fn rx_bytes(&self) -> usize {
        self.rx_slabs as usize * SLAB_BYTES
    }
}

static CONFIG: Mutex<Option<RdmaPoolConfig>> = Mutex::new(None);

/// Sets the pool size of cores that open their RDMA resources from now on. An out-of-bounds
/// configuration is refused here, with the bound it breaks.
pub fn set_pool_config(cfg: RdmaPoolConfig) -> Result<()> {
    cfg.validate()?;
    *CONFIG.lock().unwrap_or_else(PoisonError::into_inner) = Some(cfg);
    Ok(())
}

/// What a core opening its RDMA resources now gets: the last [`set_pool_config`], else the
/// default.
pub fn pool_config() -> RdmaPoolConfig {
    CONFIG
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_sizes() {
        let c = RdmaPoolConfig::default();
        assert_eq!(c.tx_bytes(), 46 << 20);
        assert_eq!(c.rx_bytes(), 32 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn out_of_bounds_sizes_are_refused_with_the_bound() {
        let e = RdmaPoolConfig {
            rx_slabs: MAX_RX_SLABS + 1,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("at most 4096"), "{e}");
        let e = set_pool_config(RdmaPoolConfig {
            tx_chunks: [1, 1, MAX_TX_CHUNKS + 1, 1],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("send chunks"), "{e}");
        assert_eq!(
            pool_config(),
            RdmaPoolConfig::default(),
            "a refused config is not kept"
        );
    }
}
