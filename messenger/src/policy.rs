//! Connection policies (Ceph's `Messenger::Policy`): how a session behaves on faults and which
//! features it requires, chosen per peer entity type.

use crate::wire::EntityType;

/// A connection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Drop the session on any fault (no replay); dispatchers get `ms_handle_reset`.
    pub lossy: bool,
    /// Never initiate a connection to this peer (we only accept).
    pub server: bool,
    /// Keep the session across faults and wait for the peer to reconnect (peer-to-peer).
    pub standby: bool,
    /// Whether a reconnect after a reset of the peer is reported (`ms_handle_remote_reset`).
    pub resetcheck: bool,
    /// Ceph features the peer must support.
    pub features_required: u64,
}

impl Policy {
    /// `Policy::lossy_client`: a client that drops the session on faults (e.g. client→osd).
    pub const fn lossy_client(features_required: u64) -> Self {
        Policy {
            lossy: true,
            server: false,
            standby: false,
            resetcheck: false,
            features_required,
        }
    }
    /// `Policy::lossless_client`: reconnects and replays (e.g. client→mon... mds).
    pub const fn lossless_client(features_required: u64) -> Self {
        Policy {
            lossy: false,
            server: false,
            standby: false,
            resetcheck: true,
            features_required,
        }
    }
    /// `Policy::lossless_peer`: both sides may connect, session kept in standby (osd↔osd).
    pub const fn lossless_peer(features_required: u64) -> Self {
        Policy {
            lossy: false,
            server: false,
            standby: true,
            resetcheck: true,
            features_required,
        }
    }
    /// `Policy::stateless_server`: accepts, lossy, keeps no session state (e.g. mon for clients).
    pub const fn stateless_server(features_required: u64) -> Self {
        Policy {
            lossy: true,
            server: true,
            standby: false,
            resetcheck: false,
            features_required,
        }
    }
}

/// Policies per peer entity type, with a default (Ceph's `PolicySet`).
#[derive(Debug, Clone)]
pub struct PolicySet {
    default: Policy,
    by_type: Vec<(EntityType, Policy)>,
}

impl PolicySet {
    /// All peers get `default`.
    pub fn new(default: Policy) -> Self {
        PolicySet {
            default,
            by_type: Vec::new(),
        }
    }

    /// Defaults for a messenger of entity type `me`, as the Ceph daemons set them.
    pub fn defaults_for(me: EntityType) -> Self {
        match me {
            EntityType::Client => PolicySet::new(Policy::lossy_client(0))
                .with(EntityType::Mon, Policy::lossless_client(0))
                .with(EntityType::Mds, Policy::lossless_client(0)),
            EntityType::Osd => PolicySet::new(Policy::stateless_server(0))
                .with(EntityType::Osd, Policy::lossless_peer(0))
                .with(EntityType::Mon, Policy::lossless_client(0))
                .with(EntityType::Mgr, Policy::lossy_client(0)),
            EntityType::Mon => PolicySet::new(Policy::stateless_server(0))
                .with(EntityType::Mon, Policy::lossless_peer(0)),
            _ => PolicySet::new(Policy::stateless_server(0))
                .with(EntityType::Mon, Policy::lossless_client(0)),
        }
    }

    /// Sets the policy for peers of type `ty`.
    pub fn with(mut self, ty: EntityType, p: Policy) -> Self {
        self.set(ty, p);
        self
    }

    /// Sets the policy for peers of type `ty`.
    pub fn set(&mut self, ty: EntityType, p: Policy) {
        self.by_type.retain(|(t, _)| *t != ty);
        self.by_type.push((ty, p));
    }

    /// Sets the default policy.
    pub fn set_default(&mut self, p: Policy) {
        self.default = p;
    }

    /// The policy for a peer of type `ty`.
    pub fn get(&self, ty: EntityType) -> Policy {
        self.by_type
            .iter()
            .find(|(t, _)| *t == ty)
            .map_or(self.default, |(_, p)| *p)
    }

    /// The default policy (used until the peer's type is known).
    pub fn default_policy(&self) -> Policy {
        self.default
    }
}
