//! Malformed and adversarial messages: each is refused and leaves the node exactly as it was.

use ringleader_raft::{
    HardState, INDEX_MAX, Raft, RaftError, Recovered, Role, TERM_MAX, encode_conf,
};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, ConfState, Entry, EntryKind, Heartbeat, HeartbeatResponse,
    InstallSnapshot, ReadIndexResponse, TimeoutNow, VoteRequest,
};

use crate::cluster::{Cluster, TestRng, cfg, entry, hdr, seen, test_rng, voters};

// ----- malformed and adversarial messages -----

/// Node 1, following node 2 in term 2, holding 1@1 2@2 3@2 with 2 committed.
fn follower() -> Raft<TestRng> {
    let mut n = Raft::new(
        cfg(),
        1,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 2 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 2), entry(3, 2)],
        },
        test_rng(1),
        Time::ZERO,
    )
    .unwrap();
    n.step(Time::ZERO, append(2, 2, 2, 2, 2, vec![])).unwrap();
    let _ = n.ready();
    assert_eq!((n.leader_id(), n.log().committed()), (2, 2));
    n
}

fn append(
    from: u64,
    term: u64,
    prev: u64,
    prev_term: u64,
    commit: u64,
    entries: Vec<Entry>,
) -> Message {
    Message::AppendEntries(AppendEntries {
        header: hdr(from, 1, term),
        prev_log_index: prev,
        prev_log_term: prev_term,
        leader_commit: commit,
        entries,
    })
}

/// `m` is refused as malformed and nothing changes.
fn refused(n: &mut Raft<TestRng>, m: Message) {
    let before = seen(n);
    let what = format!("{m:?}");
    match n.step(Time::from_millis(1), m) {
        Err(RaftError::Malformed(_)) => {}
        other => panic!("{what} gave {other:?}"),
    }
    assert_eq!(seen(n), before, "{what} changed the node");
}

#[test]
fn append_entries_that_do_not_follow_prev_log_index_are_refused() {
    let mut n = follower();
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(5, 2)])); // a gap after prev
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(6, 2)]),
    ); // a gap inside
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(3, 2)]),
    ); // decreasing
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(4, 2)]),
    ); // repeated
    refused(&mut n, append(2, 2, 1, 1, 2, vec![entry(1, 1)])); // before prev
}

#[test]
fn append_entries_whose_terms_decrease_or_pass_the_leaders_are_refused() {
    let mut n = follower();
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(4, 1)])); // below prev_log_term
    refused(
        &mut n,
        append(2, 2, 2, 2, 2, vec![entry(3, 2), entry(4, 1)]),
    ); // decreasing
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(4, 3)])); // above the message's term
    refused(&mut n, append(2, 2, 3, 3, 2, vec![])); // prev_log_term above it
    refused(&mut n, append(2, 2, 0, 1, 2, vec![])); // index 0 has term 0
    // A configuration entry that does not decode, or names no voter.
    let mut bad = entry(4, 2);
    bad.kind = EntryKind::Config;
    refused(&mut n, append(2, 2, 3, 2, 2, vec![bad.clone()]));
    bad.payload = encode_conf(&ConfState::default());
    refused(&mut n, append(2, 2, 3, 2, 2, vec![bad]));
}

#[test]
fn indexes_near_u64_max_are_refused() {
    let mut n = follower();
    let e = |index| Entry {
        index,
        ..entry(1, 2)
    };
    // prev + len overflows.
    refused(&mut n, append(2, 2, u64::MAX, 2, 2, vec![e(0)]));
    refused(
        &mut n,
        append(2, 2, u64::MAX - 1, 2, 2, vec![e(u64::MAX), e(0)]),
    );
    // Within u64 but past INDEX_MAX.
    refused(
        &mut n,
        append(2, 2, INDEX_MAX, 2, 2, vec![e(INDEX_MAX + 1)]),
    );
    refused(&mut n, append(2, 2, u64::MAX, 2, 2, vec![]));
    refused(&mut n, append(2, 2, 3, 2, u64::MAX, vec![]));
    refused(
        &mut n,
        Message::VoteRequest(VoteRequest {
            header: hdr(3, 1, 3),
            last_log_index: u64::MAX,
            last_log_term: 2,
            pre_vote: false,
            leadership_transfer: true,
        }),
    );
    refused(
        &mut n,
        Message::ReadIndexResponse(ReadIndexResponse {
            header: hdr(2, 1, 2),
            ctx: 1,
            index: u64::MAX,
        }),
    );
}

#[test]
fn terms_past_term_max_are_never_adopted_and_term_max_is_never_passed() {
    let mut n = follower();
    for term in [TERM_MAX + 1, u64::MAX] {
        refused(&mut n, append(2, term, 3, 2, 2, vec![]));
        refused(
            &mut n,
            Message::VoteRequest(VoteRequest {
                header: hdr(3, 1, term),
                last_log_index: 3,
                last_log_term: 2,
                pre_vote: false,
                leadership_transfer: true,
            }),
        );
    }
    // A candidate's log cannot end in a term later than its own.
    refused(
        &mut n,
        Message::VoteRequest(VoteRequest {
            header: hdr(3, 1, 3),
            last_log_index: 3,
            last_log_term: 4,
            pre_vote: false,
            leadership_transfer: true,
        }),
    );
    // TERM_MAX itself is a term like another, but no node campaigns past it.
    n.step(Time::from_millis(1), append(3, TERM_MAX, 3, 2, 2, vec![]))
        .unwrap();
    assert_eq!((n.term(), n.leader_id()), (TERM_MAX, 3));
    let _ = n.ready();
    for ms in (100..2000).step_by(100) {
        n.tick(Time::from_millis(ms));
    }
    assert_eq!((n.term(), n.role()), (TERM_MAX, Role::Follower));
    assert!(n.ready().messages.is_empty(), "no candidacy past TERM_MAX");
}

#[test]
fn answers_beyond_anything_the_leader_sent_are_refused() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let f = if l == 1 { 2 } else { 1 };
    let (term, last) = (c.node(l).term(), c.node(l).log().last_index());
    let resp = |success, match_index, reject_hint_index, reject_hint_term| {
        Message::AppendResponse(AppendResponse {
            header: hdr(f, l, term),
            success,
            match_index,
            reject_hint_index,
            reject_hint_term,
        })
    };
    let mut leader = c.nodes.remove(&l).expect("leader");
    refused(&mut leader, resp(true, last + 1, 0, 0)); // acknowledges entries never sent
    refused(&mut leader, resp(false, last + 1, 0, 0)); // rejects a prev never sent
    refused(&mut leader, resp(false, last, last + 1, 1)); // hint past the rejected index
    refused(&mut leader, resp(false, last, 1, term + 1)); // hint term past the follower's
    refused(&mut leader, resp(true, u64::MAX, 0, 0));
    refused(
        &mut leader,
        Message::HeartbeatResponse(HeartbeatResponse {
            header: hdr(f, l, term),
            ctx: u64::MAX, // a heartbeat round never sent
        }),
    );
    // A second leader in this leader's own term.
    let mut forged = append(f, term, last, term, 0, vec![]);
    if let Message::AppendEntries(a) = &mut forged {
        a.header.to = l;
    }
    refused(&mut leader, forged);
}

/// A heartbeat's commit is at most what this node acknowledged; one past its log means the
/// node lost acknowledged entries (wiped storage): it commits nothing on that word and
/// answers with a rejection naming where its log really ends, so the leader probes (and
/// sends a snapshot) from there.
#[test]
fn heartbeat_commit_beyond_the_log_commits_nothing_and_says_where_the_log_ends() {
    let mut n = follower();
    let _ = n.ready();
    let (last, committed) = (n.log().last_index(), n.log().committed());
    for commit in [last + 1, last + 100] {
        n.step(
            Time::ZERO,
            Message::Heartbeat(Heartbeat {
                header: hdr(2, 1, 2),
                commit,
                ctx: 1,
            }),
        )
        .unwrap();
        assert_eq!(
            n.log().committed(),
            committed,
            "nothing commits on that word"
        );
        let rd = n.ready();
        assert!(
            rd.messages.iter().any(|m| matches!(m,
                Message::AppendResponse(r)
                    if !r.success && r.match_index == commit && r.reject_hint_index == last)),
            "the node says where its log ends: {:?}",
            rd.messages
        );
    }
}

#[test]
fn snapshot_chunks_that_overflow_or_lie_are_refused() {
    let mut n = follower();
    let snap = |index, term, offset, total_bytes, data: Vec<u8>, done, conf| {
        Message::InstallSnapshot(InstallSnapshot {
            header: hdr(2, 1, 2),
            last_included_index: index,
            last_included_term: term,
            conf,
            offset,
            total_bytes,
            data,
            done,
        })
    };
    let ok = voters(3);
    refused(
        &mut n,
        snap(5, 2, u64::MAX - 1, u64::MAX, vec![1; 4], true, ok.clone()),
    ); // offset + len overflows
    refused(&mut n, snap(5, 2, 8, 10, vec![1; 4], true, ok.clone())); // past total_bytes
    refused(&mut n, snap(5, 2, 0, 10, vec![1; 4], true, ok.clone())); // `done` mid-way
    refused(&mut n, snap(5, 2, 0, 4, vec![1; 4], false, ok.clone())); // not `done` at the end
    refused(
        &mut n,
        snap(u64::MAX, 2, 0, 4, vec![1; 4], true, ok.clone()),
    );
    refused(
        &mut n,
        snap(INDEX_MAX + 1, 2, 0, 4, vec![1; 4], true, ok.clone()),
    );
    refused(&mut n, snap(0, 0, 0, 4, vec![1; 4], true, ok.clone()));
    refused(&mut n, snap(5, 3, 0, 4, vec![1; 4], true, ok)); // term past the leader's
    refused(
        &mut n,
        snap(5, 2, 0, 4, vec![1; 4], true, ConfState::default()),
    );
    let with_zero = ConfState {
        voters: vec![0, 1, 2],
        ..ConfState::default()
    };
    refused(&mut n, snap(5, 2, 0, 4, vec![1; 4], true, with_zero));
}

#[test]
fn forged_senders_are_refused_but_an_unknown_leader_is_followed() {
    let mut n = follower();
    refused(&mut n, append(0, 2, 3, 2, 2, vec![])); // node 0
    refused(&mut n, append(1, 2, 3, 2, 2, vec![])); // this node
    refused(&mut n, append(3, 2, 3, 2, 2, vec![])); // a second leader in term 2
    let timeout_now = |from, term| {
        Message::TimeoutNow(TimeoutNow {
            header: hdr(from, 1, term),
        })
    };
    refused(&mut n, timeout_now(3, 2)); // not the leader
    refused(&mut n, timeout_now(2, 3)); // a term this node never acknowledged
    refused(
        &mut n,
        Message::ReadIndexResponse(ReadIndexResponse {
            header: hdr(3, 1, 2),
            ctx: 1,
            index: 2,
        }),
    );
    // A learner being added may hear from a leader (here node 9) that its bootstrap
    // configuration does not name, and must follow it.
    let mut learner = Raft::new(
        cfg(),
        4,
        voters(3),
        Recovered::default(),
        test_rng(4),
        Time::ZERO,
    )
    .unwrap();
    let from_9 = Message::AppendEntries(AppendEntries {
        header: hdr(9, 4, 5),
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        entries: vec![entry(1, 5)],
    });
    learner.step(Time::ZERO, from_9).unwrap();
    assert_eq!((learner.term(), learner.leader_id()), (5, 9));
    assert!(matches!(
        &learner.ready().persisted_messages[..],
        [Message::AppendResponse(r)] if r.success && r.match_index == 1
    ));
}

#[test]
fn an_acknowledgement_of_entries_replaced_before_the_write_never_leaves() {
    let mut n = follower();
    // Acknowledged (held until the write), then replaced by a newer leader before any
    // Ready: the old acknowledgement must not leave, it no longer describes the disk.
    n.step(Time::ZERO, append(2, 2, 3, 2, 2, vec![entry(4, 2)]))
        .unwrap();
    n.step(Time::ZERO, append(3, 3, 2, 2, 2, vec![entry(3, 3)]))
        .unwrap();
    let rd = n.ready();
    assert_eq!(n.log().last_index(), 3);
    let acks: Vec<(u64, u64)> = rd
        .persisted_messages
        .iter()
        .filter_map(|m| match m {
            Message::AppendResponse(r) if r.success => Some((r.header.to, r.match_index)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(3, 3)]);
}
