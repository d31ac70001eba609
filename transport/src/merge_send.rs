//! The RDMA stack's merge-send policy (the seed's "merge send"): when a connection's queue
//! pair is busy, wait a little and post fewer, fuller work requests.
//!
//! Every pump turn of an RDMA connection copies what is queued into SENDs of up to the
//! peer's buffer size (16 KiB) and posts them as one chain. When the QP has few work requests
//! in flight, posting at once is right: the adapter is idle and waiting costs latency. When
//! it has many, the adapter is behind anyway, and a turn that posts a 4 KiB message as its
//! own SEND spends a work request, a receive credit, a completion slot and a doorbell on
//! 4 KiB. [`MergeState::decide`] then defers the turn until enough bytes are queued to fill
//! a batch: the next send completion (there is one coming: the last request of every chain
//! is signaled) runs the pump again, with more queued.
//!
//! The batch target adapts: each post made while busy doubles it (up to
//! [`MergeSend::max_batch`]); each post made while not busy halves it (down to
//! [`MergeSend::min_batch`]). So a steady overload converges on full batches, and a burst
//! that ends lets the target decay back to low latency.
//!
//! Progress: a turn is deferred only while at least [`MergeSend::threshold`] (≥ 1) requests
//! are in flight, whose completions re-run the pump; once they drain, the turn posts
//! whatever is queued. Turns with something that must not wait (end of stream, receive
//! buffers to advertise, credits owed to the peer) always post.
//!
//! The policy itself is plain logic, tested here; `corewire-perf rdma-bench --merge both`
//! (`scripts/rdma-bench`) measures it on and off. On Soft-RoCE over loopback it never
//! triggers: rxe completes a request inside the `ibv_post_send` that posts it, so a pump turn
//! never finds requests in flight (0 deferrals, on/off throughput 0.97-1.01x). It is for
//! adapters whose completions lag the post by microseconds; its effect there is unmeasured.

/// The merge-send policy of RDMA connections (`EndpointConfig::merge_send`). Other
/// transports ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeSend {
    /// Work requests in flight on the QP from which a pump turn may defer, to merge more
    /// queued bytes into fewer SENDs. 0 turns merging off (every turn posts). Default: 8.
    pub threshold: u32,
    /// Queued bytes a busy connection first waits for, and the floor the target decays to.
    /// Default: 8 KiB (two 4 KiB messages per SEND).
    pub min_batch: usize,
    /// The most the target grows to. Default: 64 KiB (four full 16 KiB SENDs).
    pub max_batch: usize,
}

impl Default for MergeSend {
    fn default() -> Self {
        MergeSend {
            threshold: 8,
            min_batch: 8 << 10,
            max_batch: 64 << 10,
        }
    }
}

impl MergeSend {
    /// Never defer: every pump turn posts what is queued.
    pub const OFF: MergeSend = MergeSend {
        threshold: 0,
        min_batch: 0,
        max_batch: 0,
    };

    /// Whether the policy ever defers.
    pub fn is_on(&self) -> bool {
        self.threshold > 0 && self.max_batch > 0
    }
}

/// What a pump turn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Post what is queued now.
    Post,
    /// Wait for a send completion (and more queued bytes).
    Defer,
}

/// One connection's adaptive batch target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeState {
    target: usize,
}

impl MergeState {
    pub fn new(p: &MergeSend) -> MergeState {
        MergeState {
            target: p.min_batch.min(p.max_batch),
        }
    }

    /// The bytes a busy turn waits for now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Decides a pump turn: `in_flight` work requests posted and not completed, `queued`
    /// bytes waiting, `urgent` when something queued must not wait.
    pub fn decide(
        &mut self,
        p: &MergeSend,
        in_flight: u32,
        queued: usize,
        urgent: bool,
    ) -> Decision {
        if !p.is_on() {
            return Decision::Post;
        }
        if urgent || in_flight < p.threshold {
            self.target = (self.target / 2).max(p.min_batch).min(p.max_batch);
            return Decision::Post;
        }
        if queued >= self.target {
            self.target = self
                .target
                .saturating_mul(2)
                .clamp(p.min_batch.max(1), p.max_batch);
            return Decision::Post;
        }
        Decision::Defer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: MergeSend = MergeSend {
        threshold: 8,
        min_batch: 8 << 10,
        max_batch: 64 << 10,
    };

    #[test]
    fn off_always_posts() {
        let mut s = MergeState::new(&MergeSend::OFF);
        for (inflight, queued) in [(0, 0), (63, 1), (64, 1 << 20)] {
            assert_eq!(
                s.decide(&MergeSend::OFF, inflight, queued, false),
                Decision::Post
            );
        }
    }

    #[test]
    fn idle_posts_at_once_busy_waits_for_a_batch() {
        let mut s = MergeState::new(&P);
        // Below the threshold: a single 4 KiB message goes now.
        assert_eq!(s.decide(&P, 7, 4096, false), Decision::Post);
        // Busy: 4 KiB waits, 8 KiB (the target) goes.
        assert_eq!(s.decide(&P, 8, 4096, false), Decision::Defer);
        assert_eq!(s.decide(&P, 8, 8192, false), Decision::Post);
        // Urgent work goes whatever the load.
        assert_eq!(s.decide(&P, 64, 0, true), Decision::Post);
    }

    #[test]
    fn target_grows_under_load_to_the_cap_and_decays_when_idle() {
        let mut s = MergeState::new(&P);
        let mut seen = vec![s.target()];
        for _ in 0..6 {
            assert_eq!(s.decide(&P, 32, 1 << 20, false), Decision::Post);
            seen.push(s.target());
        }
        assert_eq!(seen, [8, 16, 32, 64, 64, 64, 64].map(|k| k << 10));
        assert_eq!(s.decide(&P, 32, 32 << 10, false), Decision::Defer);
        let mut down = Vec::new();
        for _ in 0..4 {
            assert_eq!(s.decide(&P, 0, 100, false), Decision::Post);
            down.push(s.target());
        }
        assert_eq!(down, [32, 16, 8, 8].map(|k| k << 10));
    }

    #[test]
    fn defers_only_with_requests_in_flight() {
        // Whatever the settings, nothing in flight means nothing would re-run the pump.
        for threshold in [1, 8, 64] {
            let p = MergeSend { threshold, ..P };
            let mut s = MergeState::new(&p);
            assert_eq!(s.decide(&p, 0, 1, false), Decision::Post);
        }
    }
}
