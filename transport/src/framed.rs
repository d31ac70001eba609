//! Length-prefixed messages over any endpoint, with a size cap.
//!
//! Frame: an 8-byte header (`u32` little-endian payload length, `u32` magic `"CWF1"`), then the
//! payload. A wrong magic is [`TransportError::Malformed`]; a length over the cap is
//! [`TransportError::Oversized`], detected before anything is allocated for it; the stream
//! ending inside a frame is a [`TransportError::Reset`]. A payload that arrived inside one
//! received chunk is returned without a copy.
//!
//! The messenger has its own framing (msgr2); this is for tests, benchmarks and simple users.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Result, TransportError};
use crate::stack::Endpoint;

/// Frame header length.
pub const HEADER_LEN: usize = 8;
/// Frame magic ("CWF1", little-endian).
pub const MAGIC: u32 = u32::from_le_bytes(*b"CWF1");

/// Messages over an endpoint; see the module docs.
pub struct Framed<E> {
    ep: E,
    max: usize,
    rx: RefCell<VecDeque<Bytes>>,
    rx_len: Cell<usize>,
}

/// Encode a frame header for a payload of `len` bytes.
pub fn header(len: usize) -> Bytes {
    let mut h = BytesMut::with_capacity(HEADER_LEN);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.freeze()
}

impl<E: Endpoint> Framed<E> {
    /// Frame `ep`, accepting payloads of at most `max` bytes (at most `u32::MAX`).
    pub fn new(ep: E, max: usize) -> Framed<E> {
        Framed {
            ep,
            max: max.min(u32::MAX as usize),
            rx: RefCell::new(VecDeque::new()),
            rx_len: Cell::new(0),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &E {
        &self.ep
    }

    fn frame(&self, parts: Vec<Bytes>) -> Result<Vec<Bytes>> {
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len > self.max {
            return Err(TransportError::Oversized {
                peer: self.ep.peer_addr().clone(),
                what: "outgoing frame",
                len: len as u64,
                max: self.max as u64,
            });
        }
        let mut v = Vec::with_capacity(parts.len() + 1);
        v.push(header(len));
        v.extend(parts);
        Ok(v)
    }

    /// Send one message made of `parts`.
    pub async fn send_msg(&self, parts: Vec<Bytes>) -> Result<()> {
        let v = self.frame(parts)?;
        self.ep.send(v).await
    }

    /// Send one message only if the send queue has room now.
    pub fn try_send_msg(&self, parts: Vec<Bytes>) -> Result<()> {
        let v = self.frame(parts)?;
        self.ep.try_send(v).map_err(|(e, _)| e)
    }

    async fn fill(&self, need: usize) -> Result<()> {
        while self.rx_len.get() < need {
            match self.ep.recv().await {
                Ok(b) => {
                    self.rx_len.set(self.rx_len.get() + b.len());
                    self.rx.borrow_mut().push_back(b);
                }
                Err(TransportError::PeerClosed { peer }) if self.rx_len.get() > 0 => {
                    return Err(TransportError::Reset {
                        peer,
                        reason: format!(
                            "stream ended inside a frame ({} of {need} bytes)",
                            self.rx_len.get()
                        ),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn peek_header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let mut at = 0;
        for c in self.rx.borrow().iter() {
            let n = c.len().min(HEADER_LEN - at);
            h[at..at + n].copy_from_slice(&c[..n]);
            at += n;
            if at == HEADER_LEN {
                break;
            }
        }
        h
    }

    fn take(&self, n: usize) -> Bytes {
        let mut rx = self.rx.borrow_mut();
        self.rx_len.set(self.rx_len.get() - n);
        if let Some(front) = rx.front_mut() {
            if front.len() >= n {
                let out = front.split_to(n);
                if front.is_empty() {
                    rx.pop_front();
                }
                return out;
            }
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = rx.front_mut() else { break };
            let k = front.len().min(n - out.len());
            out.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                rx.pop_front();
            }
        }
        out.freeze()
    }

    /// Receive the next message as one contiguous buffer (copied together when it arrived in
    /// several chunks; see [`Framed::recv_msg_parts`] to avoid that).
    pub async fn recv_msg(&self) -> Result<Bytes> {
        let len = self.recv_header().await?;
        self.fill(HEADER_LEN + len).await?;
        let _ = self.take(HEADER_LEN);
        Ok(self.take(len))
    }

    /// Receive the next message as the chunks it arrived in, without copying.
    pub async fn recv_msg_parts(&self) -> Result<Vec<Bytes>> {
        let len = self.recv_header().await?;
        self.fill(HEADER_LEN + len).await?;
        let _ = self.take(HEADER_LEN);
        let mut parts = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = self.rx.borrow().front().map_or(0, |c| c.len().min(left));
            if n == 0 {
                break;
            }
            parts.push(self.take(n));
            left -= n;
        }
        Ok(parts)
    }

    /// Read and validate the next header; returns the payload length.
    async fn recv_header(&self) -> Result<usize> {
        self.fill(HEADER_LEN).await?;
        let h = self.peek_header();
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let magic = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let peer = || self.ep.peer_addr().clone();
        if magic != MAGIC {
            return Err(TransportError::Malformed {
                peer: peer(),
                what: format!("frame magic {magic:#010x}, expected {MAGIC:#010x}"),
            });
        }
        if len > self.max {
            return Err(TransportError::Oversized {
                peer: peer(),
                what: "frame",
                len: len as u64,
                max: self.max as u64,
            });
        }
        Ok(len)
    }
}
