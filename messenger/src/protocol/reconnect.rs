//! The session rules of msgr2 (Ceph's `ProtocolV2::handle_client_ident`,
//! `handle_existing_connection` and `handle_reconnect`), as pure functions of what the
//! server's owning core knows about an existing connection to the same peer.
//!
//! Who reconnects: the side that opened the session (its client) reconnects after a fault.
//! The side that accepted it (its server) keeps a lossless session in standby, with its
//! queues, and reconnects itself only when it has something to send and may connect to the
//! peer (the peer's policy is not `server` and the peer's address is known), as Ceph's
//! ProtocolV2 does: a peer that restarted then answers SESSION_RESET, and the session starts
//! over with the former server as its client. Either side's SESSION_RECONNECT carries the
//! session's cookies as they were set when it opened (the client's cookie, the server's
//! cookie), and each successful reconnect bumps `connect_seq` on both sides.
//!
//! Races: when both sides connect at once (lossless peers), each server sees CLIENT_IDENT
//! while its own outgoing connection to that peer is still opening. The side whose address
//! (then nonce) is greater keeps its own connection and answers WAIT; the other adopts the
//! incoming one into its connection (its queue is kept, its own attempt is dropped), so one
//! session survives, and both sides agree which without talking. Two SESSION_RECONNECTs of
//! the same session crossing (same `connect_seq`, both sides reconnecting) are decided the
//! same way (Ceph's `handle_reconnect` reconnect race).
//!
//! A SESSION_RECONNECT whose `msg_seq` (the last message the peer says it received from us)
//! is beyond the last seq we ever sent on the session is refused (the transport is closed
//! with [`crate::MessengerError::SeqAhead`], the session keeps its queues): resuming would
//! take messages as acked that the peer never got. Ceph does not check this
//! (`discard_requeued_up_to` trusts it); a peer can only send it by being broken or forged.

use crate::wire::{ClientIdent, SessionReconnect};

/// Which side of the session we are: the client reconnects, the server waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// A session's identity (ProtocolV2's cookies and seqs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SessionIds {
    /// The client's cookie for this session (0: none yet).
    pub(crate) client_cookie: u64,
    /// The server's cookie (0: no session established).
    pub(crate) server_cookie: u64,
    /// The peer's global_seq of the connection attempt that last succeeded (server side).
    pub(crate) peer_global_seq: u64,
    /// Reconnects of this session so far.
    pub(crate) connect_seq: u64,
}

/// What the server knows of an existing connection to the peer that is identifying itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Existing {
    pub(crate) role: Role,
    /// A session is established (it may be in standby, without a transport).
    pub(crate) established: bool,
    pub(crate) lossy: bool,
    /// Our own attempt to (re)connect to the peer is in flight.
    pub(crate) connecting: bool,
    pub(crate) ids: SessionIds,
    /// The last message seq we sent on the session (a resuming peer cannot have more).
    pub(crate) sent_seq: u64,
}

/// The answer to CLIENT_IDENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentDecision {
    /// No connection to the peer: a new one.
    New,
    /// A lossy connection to the peer exists: close it, then a new one.
    Replace,
    /// The existing connection takes the new transport and starts a new session on it.
    /// `discard`: the peer lost the old session (it restarted): drop the queued and unacked
    /// messages and report `ms_handle_remote_reset`; otherwise they go on the new session.
    Adopt { discard: bool },
    /// The same client sends CLIENT_IDENT again for the session we established with it: our
    /// SERVER_IDENT never reached it (the transport failed between the two). The session's
    /// opening goes on on the new transport (Ceph: "session establishment interrupted between
    /// client_ident and server_ident, continuing"): SERVER_IDENT again, with what we queued
    /// for the peer sent on it. It is not another session.
    Continue,
    /// Our own connection to the peer wins the race: answer WAIT and close.
    Wait,
    /// A stale attempt (its global_seq is below that of the session we hold with the peer,
    /// e.g. the attempt the peer dropped when it adopted ours in a race): answer
    /// SESSION_RETRY_GLOBAL; a live client retries above it, an abandoned one is gone.
    RetryGlobal(u64),
}

/// CLIENT_IDENT from a peer. `lossy`: the policy for this peer is lossy. `we_win_race`: our
/// address (then nonce) is greater than the peer's.
pub(crate) fn on_client_ident(
    existing: Option<&Existing>,
    ident: &ClientIdent,
    lossy: bool,
    we_win_race: bool,
) -> IdentDecision {
    let Some(ex) = existing else {
        return IdentDecision::New;
    };
    if lossy || ex.lossy {
        return IdentDecision::Replace;
    }
    if ident.global_seq < ex.ids.peer_global_seq {
        return IdentDecision::RetryGlobal(ex.ids.peer_global_seq);
    }
    match (ex.role, ex.established) {
        // Both sides connecting at once.
        (Role::Client, false) if we_win_race => IdentDecision::Wait,
        (Role::Client, false) => IdentDecision::Adopt { discard: false },
        // An incoming connection whose handshake the new one supersedes.
        (Role::Server, false) => IdentDecision::Adopt { discard: false },
        // The same client, which never got our SERVER_IDENT.
        (Role::Server, true) if ex.ids.client_cookie == ident.cookie => IdentDecision::Continue,
        // A new session while we hold one: the peer lost it (restarted).
        (_, true) => IdentDecision::Adopt { discard: true },
    }
}

/// The answer to SESSION_RECONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconnectDecision {
    /// SESSION_RECONNECT_OK: the session resumes on the new transport.
    Resume,
    /// SESSION_RETRY(connect_seq): a stale attempt.
    Retry(u64),
    /// SESSION_RETRY_GLOBAL(global_seq): a stale attempt.
    RetryGlobal(u64),
    /// SESSION_RESET(full): we have no such session.
    Reset { full: bool },
    /// WAIT: our own reconnect to the peer, racing this one, wins.
    Wait,
    /// The peer claims messages beyond the last one sent (`sent`): close the transport.
    SeqAhead { sent: u64 },
}

/// SESSION_RECONNECT from a peer (the session's client, or its server reconnecting to send).
/// `we_win_race`: our address (then nonce) is greater than the peer's.
pub(crate) fn on_reconnect(
    existing: Option<&Existing>,
    r: &SessionReconnect,
    we_win_race: bool,
) -> ReconnectDecision {
    let Some(ex) = existing else {
        return ReconnectDecision::Reset { full: true };
    };
    if ex.lossy
        || !ex.established
        || ex.ids.client_cookie != r.client_cookie
        || ex.ids.server_cookie != r.server_cookie
    {
        return ReconnectDecision::Reset { full: true };
    }
    if r.global_seq < ex.ids.peer_global_seq {
        return ReconnectDecision::RetryGlobal(ex.ids.peer_global_seq);
    }
    if r.connect_seq < ex.ids.connect_seq {
        return ReconnectDecision::Retry(ex.ids.connect_seq);
    }
    if r.msg_seq > ex.sent_seq {
        return ReconnectDecision::SeqAhead { sent: ex.sent_seq };
    }
    if ex.connecting && r.connect_seq == ex.ids.connect_seq && we_win_race {
        // Both sides reconnecting at once: ours goes on, the peer waits for it.
        return ReconnectDecision::Wait;
    }
    ReconnectDecision::Resume
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(established: bool) -> Existing {
        Existing {
            role: Role::Server,
            established,
            lossy: false,
            connecting: false,
            ids: SessionIds {
                client_cookie: 11,
                server_cookie: 22,
                peer_global_seq: 5,
                connect_seq: 3,
            },
            sent_seq: 7,
        }
    }

    fn reconnect(global_seq: u64, connect_seq: u64) -> SessionReconnect {
        SessionReconnect {
            client_cookie: 11,
            server_cookie: 22,
            global_seq,
            connect_seq,
            msg_seq: 0,
            ..Default::default()
        }
    }

    #[test]
    fn reconnect_rules() {
        let ex = server(true);
        assert_eq!(
            on_reconnect(None, &reconnect(9, 3), false),
            ReconnectDecision::Reset { full: true }
        );
        assert_eq!(
            on_reconnect(Some(&ex), &reconnect(9, 3), false),
            ReconnectDecision::Resume
        );
        assert_eq!(
            on_reconnect(Some(&ex), &reconnect(4, 3), false),
            ReconnectDecision::RetryGlobal(5)
        );
        assert_eq!(
            on_reconnect(Some(&ex), &reconnect(9, 2), false),
            ReconnectDecision::Retry(3)
        );
        let mut other = reconnect(9, 3);
        other.client_cookie = 12;
        assert_eq!(
            on_reconnect(Some(&ex), &other, false),
            ReconnectDecision::Reset { full: true }
        );
        // Either side of the session may reconnect.
        let client = Existing {
            role: Role::Client,
            ..ex
        };
        assert_eq!(
            on_reconnect(Some(&client), &reconnect(9, 3), true),
            ReconnectDecision::Resume
        );
        // Crossing reconnects: the side with the greater address waits for nobody.
        let racing = Existing {
            connecting: true,
            ..client
        };
        assert_eq!(
            on_reconnect(Some(&racing), &reconnect(9, 3), true),
            ReconnectDecision::Wait
        );
        assert_eq!(
            on_reconnect(Some(&racing), &reconnect(9, 3), false),
            ReconnectDecision::Resume
        );
        // A session that is not established cannot be resumed.
        let gone = Existing {
            established: false,
            ..ex
        };
        assert_eq!(
            on_reconnect(Some(&gone), &reconnect(9, 3), false),
            ReconnectDecision::Reset { full: true }
        );
        let lossy = Existing { lossy: true, ..ex };
        assert_eq!(
            on_reconnect(Some(&lossy), &reconnect(9, 3), false),
            ReconnectDecision::Reset { full: true }
        );
        // The peer cannot have received more than we sent.
        let mut ahead = reconnect(9, 3);
        ahead.msg_seq = 7;
        assert_eq!(
            on_reconnect(Some(&ex), &ahead, false),
            ReconnectDecision::Resume
        );
        ahead.msg_seq = 8;
        assert_eq!(
            on_reconnect(Some(&ex), &ahead, false),
            ReconnectDecision::SeqAhead { sent: 7 }
        );
    }

    #[test]
    fn ident_rules() {
        let ident = |cookie| ClientIdent {
            cookie,
            ..Default::default()
        };
        assert_eq!(
            on_client_ident(None, &ident(1), false, false),
            IdentDecision::New
        );
        let connecting = Existing {
            role: Role::Client,
            established: false,
            lossy: false,
            connecting: true,
            ids: SessionIds::default(),
            sent_seq: 0,
        };
        // The race is decided the same way on both sides.
        assert_eq!(
            on_client_ident(Some(&connecting), &ident(1), false, true),
            IdentDecision::Wait
        );
        assert_eq!(
            on_client_ident(Some(&connecting), &ident(1), false, false),
            IdentDecision::Adopt { discard: false }
        );
        let ex = server(true);
        assert_eq!(
            on_client_ident(Some(&ex), &ident(11), false, true),
            IdentDecision::RetryGlobal(5)
        );
        let ident = |cookie| ClientIdent {
            cookie,
            global_seq: 6,
            ..Default::default()
        };
        assert_eq!(
            on_client_ident(Some(&ex), &ident(11), false, true),
            IdentDecision::Continue
        );
        assert_eq!(
            on_client_ident(Some(&ex), &ident(99), false, true),
            IdentDecision::Adopt { discard: true }
        );
        assert_eq!(
            on_client_ident(Some(&ex), &ident(99), true, true),
            IdentDecision::Replace
        );
    }
}
