//! Reclamation: the sweep frees exactly what is unmarked, and members running through
//! churn never see an id reclaimed while they still hold it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use ringleader_time::Time;

use super::collect::get;
use super::{Directory, DirectoryError, Marks, SharedDirectory};
use crate::config::Config;
use crate::item::{InfoId, NodeId};
use crate::member::{Event, Member, Output};

fn addr(i: u32) -> SocketAddr {
    let o = i.to_be_bytes();
    SocketAddr::from(([127, o[1], o[2], o[3]], 7946))
}

#[test]
fn the_sweep_frees_exactly_what_is_unmarked_and_reuses_it() {
    let mut d = Directory::new(8, 16, 16);
    let t = Time::ZERO;
    let infos: Vec<InfoId> = (0..8)
        .map(|i| d.intern(&format!("m{i}"), addr(i), &[]).expect("room"))
        .collect();
    // A second triple for m1 (its address changed): only the old one is held below.
    let m1_new = d.intern("m1", addr(100), b"x").expect("room");
    assert_eq!(d.intern_name("m8"), Err(DirectoryError::TooManyNames(8)));
    assert!(d.collect_due(t), "a refused intern makes a collection due");
    let m0 = d.info(infos[0]).node;
    let m2 = d.info(infos[2]).node;
    // Hold m0 by name only, m1 by its old triple, m2 by name and triple.
    let (names, triples) = d.collect(t, |m| {
        m.node(m0);
        m.info(infos[1]);
        m.node(m2);
        m.info(infos[2]);
    });
    assert_eq!((names, triples), (5, 7), "m3..m7 and every other triple");
    assert_eq!((d.names_len(), d.infos_len()), (3, 2));
    assert_eq!(d.lookup("m0"), Some(m0));
    assert_eq!(d.name(m0), "m0");
    assert_eq!(d.name(d.info(infos[1]).node), "m1");
    assert_eq!(d.info(infos[1]).addr, addr(1));
    assert_eq!(d.info(infos[2]).node, m2);
    for i in 3..8 {
        assert_eq!(d.lookup(&format!("m{i}")), None, "m{i} was freed");
    }
    // m0's triple was freed: interning it again gives a fresh one, not a stale slot.
    let m0_again = d.intern("m0", addr(0), &[]).expect("room");
    assert_eq!(d.info(m0_again).node, m0);
    assert_eq!(d.info(m0_again).addr, addr(0));
    // m1's freed newer triple is no longer its latest.
    let m1_back = d.intern("m1", addr(100), b"x").expect("room");
    assert_eq!(d.info(m1_back).meta.as_ref(), b"x");
    assert_ne!(m1_new, infos[1]);
    // Freed ids go to new names, lowest first; the live names keep theirs.
    let fresh: Vec<NodeId> = (0..5)
        .map(|i| d.intern_name(&format!("new{i}")).expect("room again"))
        .collect();
    let mut sorted = fresh.clone();
    sorted.sort_unstable();
    assert_eq!(fresh, sorted);
    assert!(fresh.iter().all(|f| ![m0, m2].contains(f)));
    for (i, f) in fresh.iter().enumerate() {
        assert_eq!(d.name(*f), format!("new{i}"));
    }
    assert_eq!(d.name(m0), "m0");
    assert_eq!(d.name(m2), "m2");
    assert_eq!(d.footprint().name_slots, 8, "no slot beyond the bound");
    assert_eq!(d.collect_stats().collections, 1);
}

#[test]
fn collections_are_paced_by_the_high_water_mark_and_the_interval() {
    let mut d = Directory::new(100, 400, 16);
    d.set_collect_interval_ms(1_000);
    let t0 = Time::from_millis(5_000);
    for i in 0..49 {
        d.intern_name(&format!("m{i}")).expect("room");
    }
    assert!(!d.collect_due(t0), "below half the headroom");
    d.intern_name("m49").expect("room");
    assert!(d.collect_due(t0), "at the high-water mark");
    d.collect(t0, |m| (0..50).for_each(|n| m.node(n)));
    // 50 live: the next mark is 75, and not within the interval.
    for i in 50..75 {
        d.intern_name(&format!("m{i}")).expect("room");
    }
    assert!(!d.collect_due(t0 + Duration::from_millis(999)));
    assert!(d.collect_due(t0 + Duration::from_millis(1_000)));
}

/// Collects `dir`, holding what the members and the outputs in flight hold, and hands every freed name id at once to
/// a filler name that no member ever hears of (the next collection frees it again).
fn collect_and_fill(
    dir: &SharedDirectory,
    members: &[Option<Member<SmallRng>>],
    in_flight: &VecDeque<(usize, Output)>,
    now: Time,
    fillers: &mut u64,
) {
    let mut d = dir.borrow_mut();
    d.collect(now, |marks| {
        members.iter().flatten().for_each(|m| m.mark_ids(marks));
        in_flight.iter().for_each(|(_, o)| marks.output(o));
    });
    let max = d.names_max;
    while d.names_len() < max {
        *fillers += 1;
        let Ok(n) = d.intern_name(&format!("filler{fillers}")) else {
            break;
        };
        let _ = d.intern_info(n, addr(999), &[]);
    }
}

/// A few members on a lossless network that delivers at once, joined, killed, left and
/// replaced by members with new names, with a collection after every timer run and every
/// delivery (while outputs and events are still queued in the members) and the freed ids
/// taken at once by filler names that no member ever hears of. A member that used an
/// id it no longer marked would name a filler (or trip the directory's debug check on a
/// freed slot): the test fails if any event or datagram names one.
#[test]
fn members_never_see_an_id_reclaimed_while_they_hold_it() {
    let dir: SharedDirectory = Rc::new(RefCell::new(Directory::new(64, 256, 16)));
    let mut cfg = Config::local();
    cfg.dead_reap_ms = 2_000;
    cfg.gossip_to_the_dead_ms = 2_000;
    cfg.push_pull_interval_ms = 3_000;
    cfg.reconnect_interval_ms = 1_000;
    cfg.reconnect_timeout_ms = 3_000;
    cfg.reconnect_memory_max = 4;
    cfg.suspicion_max_timeout_mult = 2;
    let slots = 5u32;
    let mut members: Vec<Option<Member<SmallRng>>> = (0..slots).map(|_| None).collect();
    let mut names = 0u32;
    let mut now = Time::ZERO;
    let start = |i: u32, names: &mut u32, now: Time| {
        *names += 1;
        let mut m = Member::new(
            cfg.clone(),
            dir.clone(),
            &format!("gen{}-slot{i}", *names),
            addr(i),
            &[],
            SmallRng::seed_from_u64(u64::from(*names)),
            now,
        )
        .expect("room for a member");
        if i != 0 {
            m.join(now, &[addr(0)]).expect("joins");
        }
        m
    };
    for i in 0..slots {
        members[i as usize] = Some(start(i, &mut names, now));
    }
    let filler = |d: &Directory, n: NodeId| d.name(n).starts_with("filler");
    let mut fillers = 0u64;
    let mut checked = 0u64;
    let step = Duration::from_millis(50);
    for tick in 0..4_000u32 {
        now += step;
        // Churn (then 20 s of quiet): every 0.5 s one slot (never the seed's) changes. An
        // empty slot gets a member with a new name; a running member leaves, crashes, or
        // crashes and is replaced at once by a member with a new name on the same address.
        if tick % 10 == 9 && tick < 3_600 {
            let i = 1 + (tick / 10) % (slots - 1);
            match (members[i as usize].as_mut(), (tick / 10 * 7) % 3) {
                (Some(m), _) if m.status() == crate::member::Status::Left => {}
                (Some(m), 0) => m.leave(now),
                (Some(_), 1) => members[i as usize] = None,
                _ => {
                    // Make room: the fillers are held by nobody.
                    dir.borrow_mut().collect(now, |marks| {
                        members.iter().flatten().for_each(|m| m.mark_ids(marks));
                    });
                    members[i as usize] = Some(start(i, &mut names, now));
                }
            }
        }
        for m in members.iter_mut().flatten() {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
        }
        let mut queue: VecDeque<(usize, Output)> = VecDeque::new();
        collect_and_fill(&dir, &members, &queue, now, &mut fillers);
        // Deliver everything at once (datagrams and stream exchanges), until quiet.
        loop {
            for (i, m) in members.iter_mut().enumerate() {
                let Some(m) = m else { continue };
                while let Some(o) = m.poll_output() {
                    queue.push_back((i, o));
                }
                while let Some(e) = m.poll_event() {
                    let d = dir.borrow();
                    let mut held = Marks::new(d.nodes.len(), d.infos.len());
                    held.event(&e);
                    assert!(
                        !(0..d.nodes.len() as NodeId)
                            .any(|n| get(&held.nodes, n as usize) && filler(&d, n))
                            && !(0..d.infos.len() as InfoId).any(|n| get(&held.infos, n as usize)
                                && filler(&d, d.info(n).node)),
                        "tick {tick}: member {i} reported {e:?} about a reclaimed id"
                    );
                    if let Event::Up { info, .. } = e {
                        assert!(d.name(d.info(info).node).starts_with("gen"));
                    }
                    checked += 1;
                }
            }
            let Some((from, o)) = queue.pop_front() else {
                break;
            };
            let by_addr: HashMap<SocketAddr, usize> = (0..slots as usize)
                .filter(|&i| members[i].is_some())
                .map(|i| (addr(i as u32), i))
                .collect();
            {
                // Nothing a member sends may name a filler or go to a filler's address.
                let d = dir.borrow();
                let mut held = Marks::new(d.nodes.len(), d.infos.len());
                held.output(&o);
                let bad = (0..d.nodes.len())
                    .any(|n| get(&held.nodes, n) && filler(&d, n as NodeId))
                    || (0..d.infos.len())
                        .any(|n| get(&held.infos, n) && filler(&d, d.info(n as InfoId).node));
                let to = match &o {
                    Output::Datagram(t) => t.to,
                    Output::Stream(s) => s.to,
                };
                assert!(
                    !bad && to != addr(999),
                    "tick {tick}: member {from} sent {o:?}"
                );
                checked += 1;
            }
            match o {
                Output::Datagram(t) => {
                    if let Some(&to) = by_addr.get(&t.to)
                        && let Some(m) = members[to].as_mut()
                    {
                        m.handle_items(now, addr(from as u32), t.items);
                    }
                }
                Output::Stream(s) => {
                    let response = match by_addr.get(&s.to) {
                        Some(&to) => members[to]
                            .as_mut()
                            .map(|m| m.handle_stream_request(now, addr(from as u32), s.request)),
                        None => None,
                    };
                    if let Some(m) = members[from].as_mut() {
                        m.handle_stream_response(
                            now,
                            s.id,
                            response.ok_or(crate::member::StreamError::Unreachable),
                        );
                    }
                }
            }
            collect_and_fill(&dir, &members, &queue, now, &mut fillers);
        }
        // A leaver is dropped once its leave is out.
        for m in members.iter_mut() {
            if m.as_ref().is_some_and(|x| {
                x.status() == crate::member::Status::Left && x.broadcasts_pending() == 0
            }) {
                *m = None;
            }
        }
        collect_and_fill(&dir, &members, &VecDeque::new(), now, &mut fillers);
    }
    let d = dir.borrow();
    let stats = d.collect_stats();
    assert!(names > 100, "churn ran: {names} members");
    assert!(stats.names_freed > 100, "ids were reclaimed: {stats:?}");
    assert!(fillers > 100, "freed ids were reused: {fillers}");
    assert!(checked > 5_000, "traffic was checked: {checked}");
    // Everyone still running sees everyone else still running alive.
    let live: Vec<&Member<SmallRng>> = members.iter().flatten().collect();
    for m in &live {
        for o in &live {
            let seen = m.member(o.id()).map(|s| s.0);
            assert_eq!(
                seen,
                Some(crate::MemberState::Alive),
                "{} sees {}",
                m.id(),
                o.id()
            );
        }
    }
}
