//! The client's view of the cluster: its nodes, its group and shard counts, and which node
//! leads which group (learned from `NotLeader` hints). Pure data: no sockets, no clock.
//!
//! Everything in it came from a server and is checked before it is used: a cluster shape
//! that cannot be routed on is refused, and the tables never grow past their bounds.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use ringleader_wire::msg::client::{ClientOp, ClusterInfo, group_of_key, shard_of_group};

/// Where one attempt of a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    /// The shard's address: what the connection connects to.
    pub conn: SocketAddr,
    /// The node's base address (shard 0).
    pub base: SocketAddr,
    /// The key's group (0 for [`ClientOp::Info`]).
    pub group: u64,
}

/// The cluster as this client knows it.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Whether a node's [`ClusterInfo`] was applied (until then, `nodes` are the seeds).
    pub known: bool,
    groups: u64,
    shards: u32,
    /// `(id, base address)`, sorted by id, at most `nodes_max`.
    nodes: Vec<(u64, SocketAddr)>,
    /// Group -> leader's node id, at most `leaders_max` entries.
    leaders: HashMap<u64, u64>,
    nodes_max: usize,
    leaders_max: usize,
}

/// A `host:port` text as a socket address (a literal, or else the first address the
/// resolver gives).
pub(crate) fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    addr.to_socket_addrs().ok()?.next()
}

/// Shard `shard`'s address on the node at `base`: the base port plus the shard.
pub(crate) fn shard_addr(base: SocketAddr, shard: u32) -> Option<SocketAddr> {
    let port = u16::try_from(u32::from(base.port()).checked_add(shard)?).ok()?;
    let mut a = base;
    a.set_port(port);
    Some(a)
}

impl Topology {
    /// Before any node answered: the seeds stand for the nodes (one group, one shard), so
    /// that an `Info` request rotates over them.
    pub fn from_seeds(seeds: &[SocketAddr], nodes_max: usize, leaders_max: usize) -> Topology {
        let nodes = seeds
            .iter()
            .take(nodes_max.max(1))
            .enumerate()
            .map(|(i, &a)| (i as u64 + 1, a))
            .collect();
        Topology {
            known: false,
            groups: 1,
            shards: 1,
            nodes,
            leaders: HashMap::new(),
            nodes_max: nodes_max.max(1),
            leaders_max,
        }
    }

    /// Groups of the cluster.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Shards of every node.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The nodes' base addresses, by id.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes.iter().map(|&(_, a)| a)
    }

    /// Takes a node's answer to `Info` as the cluster's shape. Refuses one that cannot be
    /// routed on (no group, no shard, no usable node address); the view is unchanged then.
    pub fn apply(&mut self, info: &ClusterInfo) -> Result<(), String> {
        if info.groups == 0 || info.shards == 0 || info.shards > u32::from(u16::MAX) {
            return Err(format!(
                "cluster info with {} groups on {} shards cannot be routed on",
                info.groups, info.shards
            ));
        }
        let mut nodes: Vec<(u64, SocketAddr)> = info
            .nodes
            .iter()
            .take(self.nodes_max)
            .filter_map(|n| Some((n.id, resolve(&n.addr)?)))
            .collect();
        nodes.sort_unstable_by_key(|&(id, _)| id);
        nodes.dedup_by_key(|&mut (id, _)| id);
        if nodes.is_empty() {
            return Err(format!(
                "cluster info lists no node with a usable address ({} listed)",
                info.nodes.len()
            ));
        }
        if self.groups != info.groups || self.shards != info.shards || !self.known {
            self.leaders.clear();
        }
        self.leaders
            .retain(|_, id| nodes.binary_search_by_key(id, |n| n.0).is_ok());
        self.known = true;
        self.groups = info.groups;
        self.shards = info.shards;
        self.nodes = nodes;
        Ok(())
    }

    fn node_addr(&self, id: u64) -> Option<SocketAddr> {
        let i = self.nodes.binary_search_by_key(&id, |n| n.0).ok()?;
        Some(self.nodes[i].1)
    }

    /// Where attempt `attempt` of `op` goes: the group's leader when known, else the nodes
    /// in turn (starting at one that depends on the group, so groups spread); `pin` fixes
    /// the node of an `Info`. `None` when the shard's port would not fit.
    pub fn target(&self, op: &ClientOp, pin: Option<SocketAddr>, attempt: u32) -> Option<Target> {
        let n = self.nodes.len().max(1) as u64;
        let rotate = |offset: u64| -> Option<SocketAddr> {
            let i = offset.wrapping_add(u64::from(attempt)) % n;
            self.nodes.get(i as usize).map(|&(_, a)| a)
        };
        let Some(key) = op.key() else {
            let base = pin.or_else(|| rotate(0))?;
            return Some(Target {
                conn: base,
                base,
                group: 0,
            });
        };
        let group = group_of_key(key, self.groups);
        let leader = self.leaders.get(&group).and_then(|&id| self.node_addr(id));
        let base = leader.or_else(|| rotate(group))?;
        Some(Target {
            conn: shard_addr(base, shard_of_group(group, self.shards))?,
            base,
            group,
        })
    }

    /// Takes a `NotLeader` hint for `group`; returns the leader's base address if the hint
    /// names a node this view can reach. A node it did not know is added (up to the bound).
    pub fn learn_leader(
        &mut self,
        group: u64,
        leader: u64,
        leader_addr: &str,
    ) -> Option<SocketAddr> {
        let addr = if leader_addr.is_empty() {
            None
        } else {
            resolve(leader_addr)
        };
        let id = match (leader, addr) {
            (0, None) => None,
            (0, Some(a)) => self.nodes.iter().find(|n| n.1 == a).map(|n| n.0),
            (id, Some(a)) => {
                match self.nodes.binary_search_by_key(&id, |n| n.0) {
                    Ok(i) => self.nodes[i].1 = a,
                    Err(i) if self.nodes.len() < self.nodes_max => self.nodes.insert(i, (id, a)),
                    Err(_) => return None,
                }
                Some(id)
            }
            (id, None) => self.node_addr(id).map(|_| id),
        };
        let Some(id) = id else {
            self.leaders.remove(&group);
            return None;
        };
        if self.leaders.len() >= self.leaders_max && !self.leaders.contains_key(&group) {
            // Past the bound the cache starts over: hints come back with the next redirects.
            self.leaders.clear();
        }
        self.leaders.insert(group, id);
        self.node_addr(id)
    }

    /// Forgets `group`'s leader.
    pub fn forget_leader(&mut self, group: u64) {
        self.leaders.remove(&group);
    }

    /// Forgets every leadership of the node at `base` (its connection failed).
    pub fn forget_node(&mut self, base: SocketAddr) {
        let Some(id) = self.nodes.iter().find(|n| n.1 == base).map(|n| n.0) else {
            return;
        };
        self.leaders.retain(|_, l| *l != id);
    }

    /// Leaders known, for tests and counters.
    pub fn leaders_known(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use ringleader_wire::msg::client::{Consistency, NodeAddr};

    use super::*;

    fn info(groups: u64, shards: u32, nodes: &[(u64, &str)]) -> ClusterInfo {
        ClusterInfo {
            node: 1,
            groups,
            shards,
            nodes: nodes
                .iter()
                .map(|&(id, a)| NodeAddr {
                    id,
                    addr: a.to_string(),
                })
                .collect(),
        }
    }

    fn get(key: &[u8]) -> ClientOp {
        ClientOp::Get {
            key: key.to_vec(),
            consistency: Consistency::Linearizable,
        }
    }

    #[test]
    fn routes_to_the_leader_on_its_shard() {
        let seed: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut t = Topology::from_seeds(&[seed], 16, 16);
        t.apply(&info(8, 4, &[(1, "127.0.0.1:7000"), (2, "127.0.0.1:7100")]))
            .unwrap();
        let op = get(b"k");
        let group = group_of_key(b"k", 8);
        let leader = t.learn_leader(group, 2, "127.0.0.1:7100").unwrap();
        assert_eq!(leader.port(), 7100);
        let target = t.target(&op, None, 0).unwrap();
        assert_eq!(target.group, group);
        assert_eq!(target.base, leader);
        assert_eq!(
            u32::from(target.conn.port()),
            7100 + shard_of_group(group, 4)
        );
        t.forget_node(leader);
        assert_eq!(t.leaders_known(), 0);
    }

    #[test]
    fn refuses_unroutable_shapes_and_bounds_its_tables() {
        let seed: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut t = Topology::from_seeds(&[seed], 2, 1);
        assert!(t.apply(&info(0, 1, &[(1, "127.0.0.1:1")])).is_err());
        assert!(t.apply(&info(1, 0, &[(1, "127.0.0.1:1")])).is_err());
        assert!(t.apply(&info(1, 1, &[(1, "not an address")])).is_err());
        assert!(!t.known);
        t.apply(&info(
            4,
            1,
            &[(1, "127.0.0.1:1"), (2, "127.0.0.1:2"), (3, "127.0.0.1:3")],
        ))
        .unwrap();
        assert_eq!(t.addrs().count(), 2, "nodes past the bound are dropped");
        assert_eq!(
            t.learn_leader(1, 9, "127.0.0.1:9"),
            None,
            "no room for node 9"
        );
        assert!(t.learn_leader(1, 1, "").is_some());
        assert!(t.learn_leader(2, 2, "").is_some());
        assert_eq!(t.leaders_known(), 1, "the cache starts over at its bound");
        // The last port cannot host shard 1.
        assert_eq!(shard_addr("127.0.0.1:65535".parse().unwrap(), 1), None);
    }
}
