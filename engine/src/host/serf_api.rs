//! The Serf calls of [`Host`] (per hosted member, by name) and of [`Node`]: each one is a
//! command to the member's shard and a wait for its reply; key operations and queries then
//! wait for what the cluster answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringleader_wire::keyring::KEY_LEN;

use super::serf::{
    Coordinates, KeyOp, KeyReport, QueryParams, QueryStream, SerfOptions, read_snapshot,
};
use super::shard::{Command, SerfCommand, SerfStart};
use super::{Host, HostError, MemberSpec, Node};

/// The longest a key operation is waited for (its query times out well before).
const KEY_OP_WAIT: Duration = Duration::from_secs(300);
/// Room in a query's reply stream.
const QUERY_REPLIES_MAX: usize = 65_536;

impl Host {
    /// Starts a member as [`Host::add`] does, with the Serf layer when `serf` is given:
    /// with an existing snapshot at `serf.snapshot_path` it rejoins the members it knew
    /// (besides `spec.seeds`) and does not replay the events it had seen; a damaged
    /// snapshot is refused ([`HostError::Snapshot`], naming the file). Tags in `serf.tags`
    /// replace `spec.meta`.
    pub fn add_with(
        &self,
        spec: MemberSpec,
        serf: Option<SerfOptions>,
    ) -> Result<SocketAddr, HostError> {
        let serf = match serf {
            None => None,
            Some(opts) => {
                opts.check()?;
                let snapshot = match &opts.snapshot_path {
                    Some(p) => read_snapshot(p)?,
                    None => None,
                };
                Some(Box::new(SerfStart { opts, snapshot }))
            }
        };
        let shard = self.shard_of(&spec.name);
        self.ask(shard, |reply| Command::Add { spec, serf, reply })?
    }

    fn serf_ask<T>(
        &self,
        name: &str,
        make: impl FnOnce(crossbeam_channel::Sender<Result<T, HostError>>) -> SerfCommand,
    ) -> Result<T, HostError> {
        let shard = self.shard_of(name);
        self.ask(shard, |reply| Command::Serf {
            name: name.to_string(),
            cmd: make(reply),
        })?
    }

    /// Member `name` joins through `seeds` (members of another cluster, or of its own after
    /// a partition): a push-pull with each, in the background (one [`super::Event::Joined`]
    /// per seed). With Serf, the events the other side saw before are not replayed here.
    pub fn join(&self, name: &str, seeds: Vec<SocketAddr>) -> Result<(), HostError> {
        let shard = self.shard_of(name);
        self.ask(shard, |reply| Command::Join {
            name: name.to_string(),
            seeds,
            reply,
        })?
    }

    /// Member `name` fires a user event: delivered once to every member
    /// ([`super::Event::User`]). With `coalesce`, a newer event of the same name replaces
    /// an older one still waiting to be retransmitted. Returns its Lamport time.
    pub fn user_event(
        &self,
        name: &str,
        event: &str,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<u64, HostError> {
        self.serf_ask(name, |reply| SerfCommand::UserEvent {
            event: event.to_string(),
            payload,
            coalesce,
            reply,
        })
    }

    /// Member `name` issues a query; the members matching `params`' filters answer
    /// ([`super::Event::Query`] there). The stream yields acks and responses until the
    /// query's deadline.
    pub fn query(
        &self,
        name: &str,
        query: &str,
        payload: Vec<u8>,
        params: QueryParams,
    ) -> Result<QueryStream, HostError> {
        let (tx, rx) = crossbeam_channel::bounded(QUERY_REPLIES_MAX);
        let started = Instant::now();
        let (id, timeout) = self.serf_ask(name, |reply| SerfCommand::Query {
            query: query.to_string(),
            payload,
            params,
            replies: tx,
            reply,
        })?;
        Ok(QueryStream {
            id,
            rx,
            deadline: started + timeout,
            done: false,
        })
    }

    /// Replaces member `name`'s tags (gossiped as its metadata; others see them in
    /// [`Host::members`]).
    pub fn set_tags(&self, name: &str, tags: BTreeMap<String, String>) -> Result<(), HostError> {
        self.serf_ask(name, |reply| SerfCommand::SetTags { tags, reply })
    }

    fn key_op(
        &self,
        name: &str,
        op: KeyOp,
        key: Option<[u8; KEY_LEN]>,
    ) -> Result<KeyReport, HostError> {
        let (done, report) = crossbeam_channel::bounded(1);
        self.serf_ask(name, |reply| SerfCommand::Key {
            op,
            key,
            done,
            reply,
        })?;
        report.recv_timeout(KEY_OP_WAIT).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => {
                HostError::Timeout(self.shard_of(name), KEY_OP_WAIT)
            }
            crossbeam_channel::RecvTimeoutError::Disconnected => HostError::Stopped,
        })
    }

    /// Installs `key` (as a secondary) on every member, from member `name`. The report
    /// names the members that refused or did not answer.
    pub fn install_key(&self, name: &str, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.key_op(name, KeyOp::Install, Some(key))
    }

    /// Makes `key` the primary on every member.
    pub fn use_key(&self, name: &str, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.key_op(name, KeyOp::Use, Some(key))
    }

    /// Removes `key` from every member (refused where it is the primary).
    pub fn remove_key(&self, name: &str, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.key_op(name, KeyOp::Remove, Some(key))
    }

    /// Lists every member's keys ([`KeyReport::keys`]: each key with how many hold it).
    pub fn list_keys(&self, name: &str) -> Result<KeyReport, HostError> {
        self.key_op(name, KeyOp::List, None)
    }

    /// The Vivaldi coordinate of `of` (default: member `name` itself) as member `name`
    /// knows it; `None` if no ack from `of` has carried one yet.
    pub fn coordinate(
        &self,
        name: &str,
        of: Option<&str>,
    ) -> Result<Option<Coordinates>, HostError> {
        self.serf_ask(name, |reply| SerfCommand::Coordinate {
            of: of.map(str::to_string),
            reply,
        })
    }

    /// The round trip between members `a` and `b` as member `name`'s coordinates estimate
    /// it; `None` if either coordinate is unknown there.
    pub fn rtt(&self, name: &str, a: &str, b: &str) -> Result<Option<Duration>, HostError> {
        let ca = self.coordinate(name, Some(a))?;
        let cb = self.coordinate(name, Some(b))?;
        Ok(ca.zip(cb).map(|(x, y)| x.rtt_to(&y)))
    }

    /// Serf's force-leave, from member `name`: the failed member `target` is marked left
    /// across the cluster. Refused for a member that is unknown or not failed.
    pub fn force_leave(&self, name: &str, target: &str) -> Result<(), HostError> {
        self.serf_ask(name, |reply| SerfCommand::ForceLeave {
            target: target.to_string(),
            reply,
        })
    }
}

impl Node {
    /// Joins through `seeds`, in the background; see [`Host::join`].
    pub fn join(&self, seeds: Vec<SocketAddr>) -> Result<(), HostError> {
        self.host.join(&self.name, seeds)
    }

    /// Fires a user event, delivered once to every member ([`super::Event::User`]);
    /// returns its Lamport time. See [`Host::user_event`].
    pub fn user_event(
        &self,
        event: &str,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<u64, HostError> {
        self.host.user_event(&self.name, event, payload, coalesce)
    }

    /// Issues a query; see [`Host::query`].
    pub fn query(
        &self,
        query: &str,
        payload: Vec<u8>,
        params: QueryParams,
    ) -> Result<QueryStream, HostError> {
        self.host.query(&self.name, query, payload, params)
    }

    /// Replaces this member's tags; see [`Host::set_tags`].
    pub fn set_tags(&self, tags: BTreeMap<String, String>) -> Result<(), HostError> {
        self.host.set_tags(&self.name, tags)
    }

    /// Installs `key` on every member; see [`Host::install_key`].
    pub fn install_key(&self, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.host.install_key(&self.name, key)
    }

    /// Makes `key` the primary on every member.
    pub fn use_key(&self, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.host.use_key(&self.name, key)
    }

    /// Removes `key` from every member.
    pub fn remove_key(&self, key: [u8; KEY_LEN]) -> Result<KeyReport, HostError> {
        self.host.remove_key(&self.name, key)
    }

    /// Lists every member's keys.
    pub fn list_keys(&self) -> Result<KeyReport, HostError> {
        self.host.list_keys(&self.name)
    }

    /// This member's Vivaldi coordinate.
    pub fn coordinate(&self) -> Result<Option<Coordinates>, HostError> {
        self.host.coordinate(&self.name, None)
    }

    /// Member `of`'s coordinate as this member knows it.
    pub fn coordinate_of(&self, of: &str) -> Result<Option<Coordinates>, HostError> {
        self.host.coordinate(&self.name, Some(of))
    }

    /// The estimated round trip between members `a` and `b`.
    pub fn rtt(&self, a: &str, b: &str) -> Result<Option<Duration>, HostError> {
        self.host.rtt(&self.name, a, b)
    }

    /// Marks the failed member `target` left across the cluster.
    pub fn force_leave(&self, target: &str) -> Result<(), HostError> {
        self.host.force_leave(&self.name, target)
    }
}
