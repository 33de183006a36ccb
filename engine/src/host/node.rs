//! One member per process: the embedding API.

use std::net::SocketAddr;

use ringleader_wire::keyring::KEY_LEN;

use super::serf::{SerfOptions, read_keyring_file, write_keyring_file};
use super::{Census, EventMask, Host, HostConfig, HostError, HostEvent, MemberInfo, MemberSpec};
use crate::swim::Config;

/// Builds a [`Node`]: one SWIM member on its own shard, for embedding in an application.
///
/// ```no_run
/// use ringleader_engine::host::{Event, Node};
/// use ringleader_engine::swim::Config;
///
/// let node = Node::builder("web-1")
///     .bind("127.0.0.1:7946".parse().unwrap())
///     .seed("127.0.0.2:7946".parse().unwrap())
///     .config(Config::lan())
///     .start()
///     .expect("start");
/// for e in node.events().iter() {
///     if let Event::Down { member, .. } = &e.event {
///         println!("{} is down", member.name);
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    name: String,
    bind: SocketAddr,
    seeds: Vec<SocketAddr>,
    meta: Vec<u8>,
    host: HostConfig,
    serf: Option<SerfOptions>,
}

impl NodeBuilder {
    /// A member named `name` (unique in the cluster), bound to 0.0.0.0:7946 unless told
    /// otherwise, with the `lan` preset, no keys, no label, every event.
    pub fn new(name: &str) -> NodeBuilder {
        let mut host = HostConfig::default();
        // One member: one shard, not pinned (several nodes may share a machine).
        host.runtime.shards = 1;
        host.runtime.pin = false;
        host.runtime.name = "ringleader-node".to_string();
        host.members_per_shard_max = 1;
        // One member's timers: nothing to coalesce, and any probe timeout stays valid.
        host.timer_slack_ms = 0;
        host.inbound_streams_max = 64;
        // A peer needs at most a few exchanges with one member at once: no one address
        // may hold more than 8 of the 64.
        host.inbound_streams_per_ip_max = 8;
        host.outbound_streams_max = 64;
        host.udp.recv_buffers = 256;
        host.udp.send_slots = 256;
        host.udp.cq_entries = 1024;
        NodeBuilder {
            name: name.to_string(),
            bind: SocketAddr::from(([0, 0, 0, 0], 7946)),
            seeds: Vec::new(),
            meta: Vec::new(),
            host,
            serf: None,
        }
    }

    /// The UDP and TCP address (port 0: any free port, the same for both).
    pub fn bind(mut self, addr: SocketAddr) -> NodeBuilder {
        self.bind = addr;
        self
    }

    /// Adds a member to join through (any member of the cluster).
    pub fn seed(mut self, addr: SocketAddr) -> NodeBuilder {
        self.seeds.push(addr);
        self
    }

    /// Sets the members to join through.
    pub fn seeds(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> NodeBuilder {
        self.seeds = addrs.into_iter().collect();
        self
    }

    /// The SWIM configuration (`Config::lan()`, `Config::local()`, `Config::wan()`, or
    /// tuned).
    pub fn config(mut self, config: Config) -> NodeBuilder {
        self.host.swim = config;
        self
    }

    /// Encrypts every frame with AES-256-GCM; `keys[0]` seals, any of them opens.
    pub fn keys(mut self, keys: Vec<[u8; KEY_LEN]>) -> NodeBuilder {
        self.host.keys = keys;
        self
    }

    /// The cluster label: frames of other clusters are refused.
    pub fn label(mut self, label: &[u8]) -> NodeBuilder {
        self.host.label = label.to_vec();
        self
    }

    /// Metadata (tags) other members see.
    pub fn meta(mut self, meta: Vec<u8>) -> NodeBuilder {
        self.meta = meta;
        self
    }

    /// Which events [`Node::events`] delivers (default: all).
    pub fn events(mut self, mask: EventMask) -> NodeBuilder {
        self.host.events = mask;
        self
    }

    /// Everything else (ring sizes, bounds, timeouts).
    pub fn host_config(mut self, f: impl FnOnce(&mut HostConfig)) -> NodeBuilder {
        f(&mut self.host);
        self
    }

    /// Runs the Serf layer (user events, queries, tags, key rotation, coordinates) with
    /// `config`; the other Serf options keep their defaults unless set below.
    pub fn serf(mut self, config: super::SerfConfig) -> NodeBuilder {
        self.serf.get_or_insert_with(SerfOptions::default).config = config;
        self
    }

    /// Every Serf option at once (turns Serf on).
    pub fn serf_options(mut self, opts: SerfOptions) -> NodeBuilder {
        self.serf = Some(opts);
        self
    }

    /// Serf tags (turns Serf on; they replace [`NodeBuilder::meta`]).
    pub fn tags(mut self, tags: std::collections::BTreeMap<String, String>) -> NodeBuilder {
        self.serf.get_or_insert_with(SerfOptions::default).tags = tags;
        self
    }

    /// Keeps a Serf snapshot at `path` (turns Serf on): written every
    /// `snapshot_interval_ms` and at leave; at start, an existing one makes the node
    /// rejoin the members it knew without replaying old events.
    pub fn snapshot(mut self, path: impl Into<std::path::PathBuf>) -> NodeBuilder {
        self.serf
            .get_or_insert_with(SerfOptions::default)
            .snapshot_path = Some(path.into());
        self
    }

    /// The keyring file (turns Serf on): a JSON array of base64 keys, primary first, mode
    /// 0600. At start, an existing file's keys replace [`NodeBuilder::keys`]; without one,
    /// the file is created from them. It is rewritten after every key change.
    pub fn keyring_file(mut self, path: impl Into<std::path::PathBuf>) -> NodeBuilder {
        self.serf
            .get_or_insert_with(SerfOptions::default)
            .keyring_path = Some(path.into());
        self
    }

    /// Binds, starts and joins (in the background: see [`super::Event::Joined`]).
    pub fn start(mut self) -> Result<Node, HostError> {
        if let Some(path) = self.serf.as_ref().and_then(|s| s.keyring_path.clone()) {
            match read_keyring_file(&path)? {
                Some(keys) => self.host.keys = keys,
                None if !self.host.keys.is_empty() => write_keyring_file(&path, &self.host.keys)?,
                None => {}
            }
        }
        let host = Host::start(self.host)?;
        let addr = host.add_with(
            MemberSpec {
                name: self.name.clone(),
                bind: self.bind,
                seeds: self.seeds,
                meta: self.meta,
            },
            self.serf,
        )?;
        Ok(Node {
            host,
            name: self.name,
            addr,
        })
    }
}

/// A running member. Dropping it stops it without leaving (like a crash); call
/// [`Node::leave`] first to leave gracefully.
pub struct Node {
    pub(super) host: Host,
    pub(super) name: String,
    addr: SocketAddr,
}

impl Node {
    /// A builder for a member named `name`.
    pub fn builder(name: &str) -> NodeBuilder {
        NodeBuilder::new(name)
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every member it knows, with the state it sees (itself included); with Serf, also
    /// their tags, status and coordinates.
    pub fn members(&self) -> Result<Vec<MemberInfo>, HostError> {
        self.host.members(&self.name)
    }

    /// Membership events and user messages, as they happen.
    pub fn events(&self) -> &crossbeam_channel::Receiver<HostEvent> {
        self.host.events()
    }

    /// Gossips `payload` to every member, delivered once to each ([`super::Event::Message`]
    /// there); see [`Host::broadcast`].
    pub fn broadcast(&self, payload: Vec<u8>) -> Result<(), HostError> {
        self.host.broadcast(&self.name, payload)
    }

    /// Counters of the member and its transport (`expected`: the cluster size).
    pub fn census(&self, expected: usize) -> Result<Census, HostError> {
        self.host.census(expected)
    }

    /// Leaves gracefully (others see it as left, not failed), then stops.
    pub fn leave(self) -> Result<(), HostError> {
        self.host.leave(&self.name)?;
        self.host.shutdown()
    }

    /// Stops at once, without leaving.
    pub fn shutdown(self) -> Result<(), HostError> {
        self.host.shutdown()
    }
}
