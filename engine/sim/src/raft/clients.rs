//! Clients: each issues key-value operations one at a time, retries on another node when
//! refused, gives up at its deadline, and records every operation in the history the
//! linearizability checker reads.

use std::time::Duration;

use rand::Rng;
use ringleader_raft::driver::ReadConsistency;
use ringleader_raft::kv::{Command, Get, Output, ReadMode};

use super::check::{KvOp, KvRet, Operation};
use super::{Ev, Reply, Req, Sim, key_bytes};

impl Sim {
    pub(super) fn client_next(&mut self, c: usize) {
        if self.clients[c].current.is_some() || self.invoked >= self.cfg.ops {
            return;
        }
        self.invoked += 1;
        let key = self.rng.random_range(0..self.cfg.keys);
        let cl = &mut self.clients[c];
        cl.seq += 1;
        let value = ((c as u64 + 1) << 32) | cl.seq;
        let roll = self.rng.random_range(0..100);
        let (op, req) = match roll {
            0..30 => (
                KvOp::Put(value),
                Req::Write {
                    cmd: Command::Put {
                        key: key_bytes(key),
                        value: value.to_le_bytes().to_vec(),
                    },
                },
            ),
            30..40 => (
                KvOp::Delete,
                Req::Write {
                    cmd: Command::Delete {
                        key: key_bytes(key),
                    },
                },
            ),
            40..55 => {
                let expected = if self.rng.random_bool(0.2) {
                    None
                } else {
                    self.written_values
                        .iter()
                        .rev()
                        .nth(self.rng.random_range(0..3))
                        .copied()
                };
                (
                    KvOp::Cas {
                        expected,
                        new: value,
                    },
                    Req::Write {
                        cmd: Command::Cas {
                            key: key_bytes(key),
                            expected: expected.map(|v| v.to_le_bytes().to_vec()),
                            new: value.to_le_bytes().to_vec(),
                        },
                    },
                )
            }
            55..75 => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Consistent,
                },
            ),
            75..92 => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Default,
                },
            ),
            _ => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Stale,
                },
            ),
        };
        if matches!(op, KvOp::Put(_) | KvOp::Cas { .. }) {
            self.written_values.insert(value);
        }
        let now = self.sched.now().as_nanos();
        self.history.push(Operation {
            key,
            op,
            ret: KvRet::Unknown,
            invoke: now,
            ret_time: u64::MAX,
        });
        // Stale reads are not linearizable by design: kept out of the checked history.
        self.void.push(matches!(
            req,
            Req::Read {
                mode: ReadMode::Stale,
                ..
            }
        ));
        let h = self.history.len() - 1;
        self.clients[c].current = Some((h, req, 0));
        self.clients[c].attempt += 1;
        let attempt = self.clients[c].attempt;
        self.sched.schedule_in(
            Duration::from_millis(self.cfg.op_timeout_ms),
            Ev::ClientTimeout { client: c, attempt },
        );
        self.client_send(c);
    }

    pub(super) fn client_send(&mut self, c: usize) {
        let Some((_, req, _)) = self.clients[c].current.clone() else {
            return;
        };
        let n = self.nodes.len() as u64;
        let guess = self.clients[c].leader_guess;
        // Mostly the node believed to lead; sometimes any node (a deposed leader included).
        let sticky = self.rng.random_bool(0.75);
        let node = if sticky
            && guess != 0
            && !matches!(
                req,
                Req::Read {
                    mode: ReadMode::Stale,
                    ..
                }
            ) {
            guess
        } else {
            self.rng.random_range(1..=n)
        };
        let attempt = self.clients[c].attempt;
        let d = self.rng.random_range(1..=3);
        self.sched.schedule_in(
            Duration::from_millis(d),
            Ev::ToNode {
                node,
                client: c,
                attempt,
                req,
            },
        );
    }

    /// A client's request reaches node `i`: into its driver (dropped if the node is down).
    pub(super) fn node_request(&mut self, i: usize, client: usize, attempt: u64, req: Req) {
        let now = self.sched.now();
        let deadline = now + Duration::from_millis(self.cfg.request_timeout_ms);
        let n = &mut self.nodes[i];
        let Some(d) = n.driver.as_mut() else { return };
        let token = (client, attempt);
        n.unanswered.insert(token, deadline);
        match req {
            Req::Write { cmd } if self.batch_window_ms > 0 => {
                n.batch.push((cmd.encode(), token, deadline));
                if n.batch.len() == 1 {
                    let ev = Ev::ProposeBatch {
                        node: n.id,
                        incarnation: n.incarnation,
                    };
                    self.sched
                        .schedule_in(Duration::from_millis(self.batch_window_ms), ev);
                }
                return;
            }
            Req::Write { cmd } => d.propose(now, cmd.encode(), token, deadline, &mut self.out),
            Req::Read { key, mode } => {
                let consistency = match mode {
                    ReadMode::Consistent => ReadConsistency::Linearizable,
                    ReadMode::Default => ReadConsistency::Lease,
                    ReadMode::Stale => ReadConsistency::Stale,
                };
                let query = Get {
                    key: key_bytes(key),
                };
                d.read(now, query, consistency, token, deadline, &mut self.out);
            }
        }
        self.after_input(i);
    }

    /// The client gives up on attempt `attempt` (its own timeout, or its node's driver
    /// gave up): the operation stays in the history with an unknown outcome and an
    /// infinite return time.
    pub(super) fn give_up(&mut self, c: usize, attempt: u64) {
        if self.clients[c].attempt != attempt || self.clients[c].current.take().is_none() {
            return;
        }
        self.report.ops_unknown += 1;
        self.clients[c].attempt += 1;
        self.clients[c].leader_guess = 0;
        self.sched
            .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
    }

    pub(super) fn client_reply(&mut self, c: usize, attempt: u64, reply: Reply) {
        if self.clients[c].attempt != attempt {
            return;
        }
        if let Reply::Unknown = reply {
            self.give_up(c, attempt);
            return;
        }
        let Some((h, req, tries)) = self.clients[c].current.take() else {
            return;
        };
        let now = self.sched.now().as_nanos();
        match reply {
            Reply::Refused { leader_hint } => {
                if tries >= 30 {
                    // Definitely never happened: drop it from the history.
                    self.void[h] = true;
                    self.clients[c].attempt += 1;
                    self.sched
                        .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
                    return;
                }
                self.clients[c].leader_guess = leader_hint;
                self.clients[c].current = Some((h, req, tries + 1));
                let backoff = self.rng.random_range(5..30);
                self.clients[c].attempt += 1;
                let attempt = self.clients[c].attempt;
                // The timeout restarts with the new attempt.
                self.sched.schedule_in(
                    Duration::from_millis(self.cfg.op_timeout_ms),
                    Ev::ClientTimeout { client: c, attempt },
                );
                self.sched.schedule_in(
                    Duration::from_millis(backoff),
                    Ev::ClientResend { client: c, attempt },
                );
            }
            Reply::Written(out) => {
                self.history[h].ret = match out {
                    Output::Done => KvRet::Done,
                    Output::Cas(ok) => KvRet::Cas(ok),
                };
                self.history[h].ret_time = now;
                self.report.ops_acked += 1;
                self.clients[c].done += 1;
                self.sched
                    .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
            }
            Reply::Unknown => {}
            Reply::Value(v) => {
                if let Some(x) = v
                    && !self.written_values.contains(&x)
                {
                    self.violation(format!("read returned {x:#x}, a value never written"));
                }
                self.history[h].ret = KvRet::Value(v);
                self.history[h].ret_time = now;
                if !self.void[h] {
                    self.report.ops_acked += 1;
                }
                self.clients[c].done += 1;
                self.sched
                    .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
            }
        }
    }
}
