//! Embedding a Raft group: replicate your own state machine, not the key-value store.
//!
//! Three nodes in one process (on 127.0.0.1, ports 47001-47003, data in a temporary
//! folder) replicate a counter in one group. The program proposes increments on the
//! leader, reads the total back linearizably, then reads it on every node.
//!
//! ```sh
//! cargo run --release -p ringleader-engine --example replicated_counter
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringleader_engine::multiraft::{Machine, Server, ServerConfig};
use ringleader_engine::raft::driver::{ReadConsistency, Refusal, Reply, StateMachine};
use ringleader_wire::msg::raft::Entry;

/// The replicated state: a counter. Commands are little-endian i64 deltas.
#[derive(Default)]
struct Counter {
    total: i64,
}

impl StateMachine for Counter {
    /// The total after the command.
    type Output = Result<i64, String>;
    /// A read of the total.
    type Read = ();
    type ReadOutput = i64;

    fn apply(&mut self, entries: &[Entry], out: &mut Vec<Self::Output>) {
        for e in entries {
            match <[u8; 8]>::try_from(e.payload.as_slice()) {
                Ok(b) => {
                    self.total = self.total.wrapping_add(i64::from_le_bytes(b));
                    out.push(Ok(self.total));
                }
                Err(_) => out.push(Err(format!("entry {} is not an i64 delta", e.index))),
            }
        }
    }

    fn read(&self, _: &()) -> i64 {
        self.total
    }

    fn snapshot(&self) -> Vec<u8> {
        self.total.to_le_bytes().to_vec()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let b = <[u8; 8]>::try_from(data).map_err(|_| "a counter snapshot has 8 bytes")?;
        self.total = i64::from_le_bytes(b);
        Ok(())
    }
}

/// The counter speaks no client protocol: the defaults refuse it.
impl Machine for Counter {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let peers: BTreeMap<u64, SocketAddr> = (1..=3)
        .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 47_000 + id as u16))))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let cfg = ServerConfig::new(id, peers.clone(), dir.path().join(format!("node-{id}")));
        nodes.push(Server::start_with(cfg, |_group| Counter::default())?);
    }
    println!("3 nodes started; waiting for a leader of group 1");

    // Propose on whichever node leads (a refusal names the leader).
    let mut at = 0;
    let mut proposed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proposed < 100 {
        if Instant::now() > deadline {
            return Err("no leader within 30 s".into());
        }
        let delta: i64 = proposed + 1;
        let reply = nodes[at]
            .propose(1, delta.to_le_bytes().to_vec())?
            .recv_timeout(Duration::from_secs(10))?;
        match reply {
            Reply::Applied { index, output, .. } => {
                if proposed == 0 {
                    println!(
                        "node {} leads; first increment applied at index {index}",
                        at + 1
                    );
                }
                output?;
                proposed += 1;
            }
            Reply::Refused(Refusal::NotLeader(hint)) if hint >= 1 => at = hint as usize - 1,
            _ => {
                at = (at + 1) % nodes.len();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let total = match nodes[at]
        .read(1, (), ReadConsistency::Linearizable)?
        .recv()?
    {
        Reply::Read(v) => v,
        other => return Err(format!("read refused: {other:?}").into()),
    };
    println!(
        "linearizable read on the leader: {total} (expected {})",
        100 * 101 / 2
    );

    // Every replica applies the same log.
    for (i, n) in nodes.iter().enumerate() {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let v = match n.read(1, (), ReadConsistency::Stale)?.recv()? {
                Reply::Read(v) => v,
                _ => -1,
            };
            if v == total || Instant::now() > until {
                println!("node {}: {v}", i + 1);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for n in nodes {
        for r in n.join() {
            r?;
        }
    }
    Ok(())
}
