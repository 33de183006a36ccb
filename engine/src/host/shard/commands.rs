//! What the application asks of a shard, and how the shard answers: every command carries
//! the channel its reply goes to, and the shard never blocks on it.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringleader_wire::Message;
use ringleader_wire::msg::swim as wire;

use super::streams::Route;
use super::{Hosted, Reply, Shard, gossip_key};
use crate::host::{HostError, MemberInfo, MemberSpec, ShardCensus, StreamListeners};
use crate::swim::Member;
use crate::transport::{FrameListener, SocketOptions};

/// What the application asks of a shard.
pub(crate) enum Command {
    Add {
        spec: MemberSpec,
        reply: Reply<Result<SocketAddr, HostError>>,
    },
    Kill {
        name: String,
        reply: Reply<Result<(), HostError>>,
    },
    Leave {
        name: String,
        reply: Reply<Result<(), HostError>>,
    },
    Broadcast {
        name: String,
        payload: Vec<u8>,
        reply: Reply<Result<(), HostError>>,
    },
    Members {
        name: String,
        reply: Reply<Result<Vec<MemberInfo>, HostError>>,
    },
    Census {
        expected: usize,
        reply: Reply<ShardCensus>,
    },
}

pub(super) fn command(shard: &Rc<RefCell<Shard>>, cmd: Command) {
    match cmd {
        Command::Add { spec, reply } => {
            let r = add(shard, spec);
            let _ = reply.send(r);
        }
        Command::Kill { name, reply } => {
            let mut guard = shard.borrow_mut();
            let Shard { ring, core, .. } = &mut *guard;
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    core.remove(slot, ring);
                    Ok(())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Leave { name, reply } => {
            let mut guard = shard.borrow_mut();
            let core = &mut guard.core;
            let now = core.ctx.now();
            let linger = Duration::from_millis(core.config.leave_linger_ms);
            match core.slot_of(&name) {
                Some(slot) => {
                    if let Some(Some(h)) = core.members.get_mut(slot as usize) {
                        h.member.leave(now);
                        h.leaving = Some((now + linger, reply));
                        core.leavers.push(slot);
                        core.dirty.push(slot);
                    }
                }
                None => {
                    let _ = reply.send(Err(HostError::NoSuchMember(name)));
                }
            }
            core.ctx.waker().notify();
        }
        Command::Broadcast {
            name,
            payload,
            reply,
        } => {
            let mut guard = shard.borrow_mut();
            let core = &mut guard.core;
            let seen_max = core.config.gossip_seen_max;
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    if let Some(Some(h)) = core.members.get_mut(slot as usize) {
                        let seq = h.gossip_seq;
                        h.gossip_seq = h.gossip_seq.wrapping_add(1);
                        h.first_sight(gossip_key(&name, seq), seen_max);
                        let msg = wire::Gossip {
                            origin: name,
                            seq,
                            payload,
                        };
                        h.member.broadcast(Message::Gossip(msg), None);
                    }
                    core.dirty.push(slot);
                    core.ctx.waker().notify();
                    Ok(())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Members { name, reply } => {
            let guard = shard.borrow();
            let core = &guard.core;
            let r = match core.slot_of(&name).and_then(|s| core.hosted(s)) {
                Some(h) => {
                    let dir = core.dir.borrow();
                    Ok(h.member
                        .members()
                        .filter_map(|(node, _, _)| {
                            let (state, incarnation, info) = h.member.member(node)?;
                            let i = dir.info(info);
                            Some(MemberInfo {
                                name: dir.name(node).to_string(),
                                addr: i.addr,
                                meta: i.meta.to_vec(),
                                state,
                                incarnation,
                            })
                        })
                        .collect())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Census { expected, reply } => {
            let guard = shard.borrow();
            let _ = reply.send(guard.core.census(expected, &guard.ring));
        }
    }
}

fn add(shard: &Rc<RefCell<Shard>>, spec: MemberSpec) -> Result<SocketAddr, HostError> {
    let mut guard = shard.borrow_mut();
    let Shard { ring, core, .. } = &mut *guard;
    if core.slot_of(&spec.name).is_some() {
        return Err(HostError::Duplicate(spec.name));
    }
    let hosted = core.members.iter().flatten().count();
    if hosted >= core.config.members_per_shard_max {
        return Err(HostError::Busy(core.ctx.id()));
    }
    let bind_err = |what: String| HostError::Bind {
        name: spec.name.clone(),
        addr: spec.bind,
        what,
    };
    // UDP first (port 0 picks one), then TCP on the same port; with port 0, a port whose
    // TCP side is taken is given back and another one tried.
    let per_shard = core.config.stream_listeners == StreamListeners::PerShard;
    let mut tries = if spec.bind.port() == 0 { 16 } else { 1 };
    let (socket, addr, listener) = loop {
        let socket = ring
            .bind(spec.bind, SocketOptions::default())
            .map_err(|e| bind_err(e.to_string()))?;
        let Some(addr) = ring.local_addr(socket) else {
            ring.remove_socket(socket);
            return Err(bind_err("the bound socket has no address".into()));
        };
        let listening = if per_shard {
            core.share_listener(shard, addr).map(|()| None)
        } else {
            FrameListener::bind(addr, &core.config.label, core.config.stream_frame_bytes_max)
                .map(Some)
        };
        match listening {
            Ok(l) => break (socket, addr, l),
            Err(e) => {
                ring.remove_socket(socket);
                tries -= 1;
                if tries == 0 {
                    return Err(bind_err(format!("TCP listener: {e}")));
                }
            }
        }
    };
    let now = core.ctx.now();
    core.rng_seed = core.rng_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let member = Member::new(
        core.config.swim.clone(),
        core.dir.clone(),
        &spec.name,
        addr,
        &spec.meta,
        ChaCha8Rng::seed_from_u64(core.rng_seed),
        now,
    );
    let mut member = match member {
        Ok(m) => m,
        Err(e) => {
            ring.remove_socket(socket);
            core.unshare_listener(addr);
            return Err(HostError::Member {
                name: spec.name,
                what: e.to_string(),
            });
        }
    };
    let seeds: Vec<SocketAddr> = spec.seeds.iter().copied().filter(|s| *s != addr).collect();
    if !seeds.is_empty()
        && let Err(e) = member.join(now, &seeds)
    {
        ring.remove_socket(socket);
        core.unshare_listener(addr);
        return Err(HostError::Member {
            name: spec.name,
            what: e.to_string(),
        });
    }
    let slot = match core.free_slots.pop() {
        Some(s) => s,
        None => {
            core.members.push(None);
            (core.members.len() - 1) as u32
        }
    };
    let generation = core.next_generation;
    core.next_generation += 1;
    let acceptor =
        listener.map(|l| core.spawn_acceptor(shard, Route::Member { slot, generation }, l));
    let i = socket.0 as usize;
    if core.by_socket.len() <= i {
        core.by_socket.resize(i + 1, u32::MAX);
    }
    core.by_socket[i] = slot;
    let name: Arc<str> = Arc::from(spec.name.as_str());
    core.names.insert(Arc::clone(&name), slot);
    core.by_addr.insert(addr, slot);
    core.members[slot as usize] = Some(Hosted {
        name,
        member,
        socket,
        addr,
        generation,
        _acceptor: acceptor,
        leaving: None,
        // Random start: a member restarted under the same name does not repeat old keys.
        gossip_seq: core.rng_seed.rotate_left(17),
        gossip_seen: HashSet::new(),
        gossip_order: VecDeque::new(),
    });
    core.dirty.push(slot);
    core.ctx.waker().notify();
    Ok(addr)
}
