//! Linearizability checker for key-value histories: Wing & Gong's search with Lowe's
//! memoization of (linearized set, state), over Porcupine's linked list of call and return
//! events, partitioned by key (each key is an independent register).
//!
//! The search is exponential in the worst case, so it is bounded: past `step_limit` steps on
//! one key it answers [`CheckResult::Unknown`] instead of hanging.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Write a value.
    Put(u64),
    /// Read.
    Get,
    /// Remove.
    Delete,
    /// Compare-and-set.
    Cas {
        /// Required current value (`None` = absent).
        expected: Option<u64>,
        /// Value written on success.
        new: u64,
    },
}

/// What an operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvRet {
    /// A put or delete acknowledged.
    Done,
    /// A read's value.
    Value(Option<u64>),
    /// A compare-and-set's outcome.
    Cas(bool),
    /// No answer: the operation may or may not have taken effect (its return time is
    /// [`u64::MAX`]).
    Unknown,
}

/// One operation of a history (times in any monotonic unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: u64,
    /// The call.
    pub op: KvOp,
    /// The return.
    pub ret: KvRet,
    /// When it was invoked.
    pub invoke: u64,
    /// When it returned (`u64::MAX` if it never did).
    pub ret_time: u64,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// Some order of the operations explains every result.
    Linearizable,
    /// No order does; the first key found that way.
    NotLinearizable {
        /// The key whose sub-history is not linearizable.
        key: u64,
    },
    /// The step bound was reached before an answer.
    Unknown,
}

/// The register model: the next state, or `None` if `op` cannot return `ret` from `state`.
fn step(state: Option<u64>, op: KvOp, ret: KvRet) -> Option<Option<u64>> {
    match op {
        KvOp::Put(v) => matches!(ret, KvRet::Done | KvRet::Unknown).then_some(Some(v)),
        KvOp::Delete => matches!(ret, KvRet::Done | KvRet::Unknown).then_some(None),
        KvOp::Get => match ret {
            KvRet::Value(v) if v == state => Some(state),
            KvRet::Unknown => Some(state),
            _ => None,
        },
        KvOp::Cas { expected, new } => {
            let swap = state == expected;
            match ret {
                KvRet::Cas(ok) if ok == swap => Some(if swap { Some(new) } else { state }),
                KvRet::Unknown => Some(if swap { Some(new) } else { state }),
                _ => None,
            }
        }
    }
}

/// Checks a whole history, key by key.
pub fn check(history: &[Operation], step_limit: u64) -> CheckResult {
    let mut keys: Vec<u64> = history.iter().map(|o| o.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut unknown = false;
    for key in keys {
        let ops: Vec<&Operation> = history.iter().filter(|o| o.key == key).collect();
        match check_key(&ops, step_limit) {
            Some(true) => {}
            Some(false) => return CheckResult::NotLinearizable { key },
            None => unknown = true,
        }
    }
    if unknown {
        CheckResult::Unknown
    } else {
        CheckResult::Linearizable
    }
}

/// `Some(linearizable)`, or `None` past the step bound.
fn check_key(ops: &[&Operation], step_limit: u64) -> Option<bool> {
    let n = ops.len();
    // Nodes: 0 = head, 1..=2n = events in time order, 2n+1 = tail.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.invoke, 0, i));
        events.push((o.ret_time.max(o.invoke), 1, i));
    }
    // Calls before returns at equal times: touching operations count as concurrent.
    events.sort_unstable();
    let m = events.len();
    let tail = m + 1;
    let mut next: Vec<usize> = (1..=m + 1).chain([tail]).collect();
    let mut prev: Vec<usize> = [0].into_iter().chain(0..=m).collect();
    let mut is_call = vec![false; m + 2];
    let mut op_of = vec![0usize; m + 2];
    let mut ret_node = vec![0usize; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let node = k + 1;
        is_call[node] = kind == 0;
        op_of[node] = i;
        if kind == 1 {
            ret_node[i] = node;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = x;
        prev[q] = x;
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut entry = next[0];
    let mut steps = 0u64;
    while next[0] != tail {
        steps += 1;
        if steps > step_limit {
            return None;
        }
        if entry != tail && is_call[entry] {
            let i = op_of[entry];
            if let Some(ns) = step(state, ops[i].op, ops[i].ret) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), ns)) {
                    stack.push((entry, state));
                    state = ns;
                    linearized = lin;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_node[i]);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call could not be linearized first: undo the last choice.
            let Some((call, s)) = stack.pop() else {
                return Some(false);
            };
            let i = op_of[call];
            state = s;
            linearized[i / 64] &= !(1 << (i % 64));
            relink(&mut next, &mut prev, ret_node[i]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: u64, op: KvOp, ret: KvRet, invoke: u64, ret_time: u64) -> Operation {
        Operation {
            key,
            op,
            ret,
            invoke,
            ret_time,
        }
    }
    const LIMIT: u64 = 1_000_000;

    #[test]
    fn accepts_sequential_and_concurrent_histories() {
        let h = [
            op(1, KvOp::Put(1), KvRet::Done, 0, 10),
            op(1, KvOp::Get, KvRet::Value(Some(1)), 11, 12),
            op(
                1,
                KvOp::Cas {
                    expected: Some(1),
                    new: 2,
                },
                KvRet::Cas(true),
                13,
                14,
            ),
            op(
                1,
                KvOp::Cas {
                    expected: Some(1),
                    new: 3,
                },
                KvRet::Cas(false),
                15,
                16,
            ),
            op(1, KvOp::Delete, KvRet::Done, 17, 18),
            op(1, KvOp::Get, KvRet::Value(None), 19, 20),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::Linearizable);
        // A read concurrent with a write may see either value; two reads may disagree only
        // if the write overlaps both.
        let h = [
            op(2, KvOp::Put(5), KvRet::Done, 0, 100),
            op(2, KvOp::Get, KvRet::Value(Some(5)), 10, 20),
            op(2, KvOp::Get, KvRet::Value(None), 5, 30),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::Linearizable);
        // A write that never returned may take effect late, or never.
        let h = [
            op(3, KvOp::Put(7), KvRet::Unknown, 0, u64::MAX),
            op(3, KvOp::Get, KvRet::Value(None), 10, 20),
            op(3, KvOp::Get, KvRet::Value(Some(7)), 30, 40),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::Linearizable);
    }

    #[test]
    fn rejects_stale_read() {
        let h = [
            op(1, KvOp::Put(1), KvRet::Done, 0, 10),
            op(1, KvOp::Put(2), KvRet::Done, 20, 30),
            op(1, KvOp::Get, KvRet::Value(Some(1)), 40, 50),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::NotLinearizable { key: 1 });
    }

    #[test]
    fn rejects_lost_write() {
        let h = [
            op(4, KvOp::Get, KvRet::Value(None), 0, 5),
            op(4, KvOp::Put(9), KvRet::Done, 10, 20),
            op(4, KvOp::Get, KvRet::Value(None), 30, 40),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::NotLinearizable { key: 4 });
    }

    #[test]
    fn rejects_value_never_written() {
        let h = [
            op(6, KvOp::Put(1), KvRet::Done, 0, 10),
            op(6, KvOp::Get, KvRet::Value(Some(42)), 0, 50),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::NotLinearizable { key: 6 });
    }

    #[test]
    fn rejects_reads_going_back_in_time_and_wrong_cas() {
        // Two sequential reads during one slow write: new value, then old: not linearizable.
        let h = [
            op(1, KvOp::Put(1), KvRet::Done, 0, 5),
            op(1, KvOp::Put(2), KvRet::Done, 10, 100),
            op(1, KvOp::Get, KvRet::Value(Some(2)), 20, 30),
            op(1, KvOp::Get, KvRet::Value(Some(1)), 40, 50),
        ];
        assert_eq!(check(&h, LIMIT), CheckResult::NotLinearizable { key: 1 });
        let h = [op(
            2,
            KvOp::Cas {
                expected: Some(3),
                new: 4,
            },
            KvRet::Cas(true),
            0,
            10,
        )];
        assert_eq!(check(&h, LIMIT), CheckResult::NotLinearizable { key: 2 });
        // Only the bad key is reported.
        let mut h2 = vec![op(7, KvOp::Put(1), KvRet::Done, 0, 1)];
        h2.extend(h);
        assert_eq!(check(&h2, LIMIT), CheckResult::NotLinearizable { key: 2 });
    }

    #[test]
    fn gives_up_past_the_step_bound() {
        // Many concurrent writes and a read that matches none: a full search is needed.
        let mut h: Vec<Operation> = (0..40)
            .map(|v| op(1, KvOp::Put(v), KvRet::Done, 0, 1000))
            .collect();
        h.push(op(1, KvOp::Get, KvRet::Value(Some(999)), 0, 1000));
        assert_eq!(check(&h, 50), CheckResult::Unknown);
    }
}
