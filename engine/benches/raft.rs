//! The Raft core alone (no IO): entries per second through leader propose → ready →
//! follower step → ack → commit, three nodes, storage that is durable at once, for batch
//! sizes 1, 64 and 1024 (64-byte payloads).
//!
//! Same-run baseline: `baseline_alloc_payloads` builds the same batch of payloads (the
//! allocation any caller pays before proposing); report core throughput as a ratio to it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringleader_engine::Time;
use ringleader_engine::raft::{Config, Raft, Recovered, Role};
use ringleader_sim::{SimRng, sched};
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::ConfState;

const PAYLOAD_BYTES: usize = 64;

fn to_of(m: &Message) -> u64 {
    match m {
        Message::AppendEntries(x) => x.header.to,
        Message::AppendResponse(x) => x.header.to,
        Message::VoteRequest(x) => x.header.to,
        Message::VoteResponse(x) => x.header.to,
        Message::Heartbeat(x) => x.header.to,
        Message::HeartbeatResponse(x) => x.header.to,
        _ => 0,
    }
}

struct Group {
    nodes: Vec<Raft<SimRng>>,
    queue: Vec<Message>,
    spare: Vec<Message>,
}

impl Group {
    fn new() -> Group {
        let cfg = Config {
            pre_vote: false,
            check_quorum: false,
            inflight_msgs_max: 256,
            inflight_bytes_max: 64 << 20,
            uncommitted_entries_max: 1 << 20,
            apply_entries_max: 1 << 20,
            ..Config::default()
        };
        let conf = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![],
            voters_outgoing: vec![],
        };
        let nodes = (1..=3)
            .map(|id| {
                Raft::new(
                    cfg.clone(),
                    id,
                    conf.clone(),
                    Recovered::default(),
                    sched::rng(id),
                    Time::ZERO,
                )
                .expect("fresh node")
            })
            .collect();
        let mut g = Group {
            nodes,
            queue: Vec::new(),
            spare: Vec::new(),
        };
        g.nodes[0].tick(Time::from_millis(1000));
        g.pump();
        assert_eq!(g.nodes[0].role(), Role::Leader);
        g
    }

    fn drain(&mut self, i: usize) {
        while self.nodes[i].has_ready() {
            let rd = self.nodes[i].ready();
            self.queue.extend(rd.messages);
            if let Some(e) = rd.entries.last() {
                self.nodes[i].persisted(e.index, e.term);
            }
            self.queue.extend(rd.persisted_messages);
            if let Some(e) = rd.committed_entries.last() {
                self.nodes[i].applied(e.index);
            }
        }
    }

    fn pump(&mut self) {
        for i in 0..3 {
            self.drain(i);
        }
        while !self.queue.is_empty() {
            std::mem::swap(&mut self.queue, &mut self.spare);
            for m in self.spare.drain(..) {
                let to = to_of(&m) as usize;
                if (1..=3).contains(&to) {
                    let _ = self.nodes[to - 1].step(Time::ZERO, m);
                }
            }
            for i in 0..3 {
                self.drain(i);
            }
        }
    }

    fn round(&mut self, batch: usize) {
        let payloads = (0..batch).map(|_| vec![7u8; PAYLOAD_BYTES]);
        let (_, last) = self.nodes[0].propose(payloads).expect("leader");
        self.pump();
        assert!(self.nodes[0].log().committed() >= last);
        // Keep memory flat: compact everything applied once the log grows.
        if self.nodes[0].log().last_index() - self.nodes[0].log().offset() > 200_000 {
            for n in &mut self.nodes {
                let applied = n.log().applied();
                let _ = n.snapshot_done(applied, Arc::from(Vec::new()));
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("baseline_alloc_payloads", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    black_box(
                        (0..batch)
                            .map(|_| vec![7u8; PAYLOAD_BYTES])
                            .collect::<Vec<_>>(),
                    )
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("propose_to_commit_3_nodes", batch),
            &batch,
            |b, &batch| {
                let mut group = Group::new();
                b.iter(|| group.round(batch))
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
