//! What the application asks of a shard, and how the shard answers: every command carries
//! the channel its reply goes to, and the shard never blocks on it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::serf_io::{SerfCommand, SerfStart, SerfState, serf_command};
use super::streams::Route;
use super::{Hosted, Reply, Shard};
use crate::host::{HostError, MemberInfo, MemberSpec, MemberStatus, ShardCensus, StreamListeners};
use crate::runtime::CommandSender;
use crate::swim::Member;
use crate::transport::{FrameListener, SocketOptions};

/// Snapshot members tried as seeds at a restart, at most (each is one push-pull).
const SNAPSHOT_SEEDS_MAX: usize = 8;

/// What the application asks of a shard.
pub(crate) enum Command {
    /// The shard's handle to itself (sent once, before anything else).
    Init {
        me: CommandSender<Command>,
    },
    Add {
        spec: MemberSpec,
        serf: Option<Box<SerfStart>>,
        reply: Reply<Result<SocketAddr, HostError>>,
    },
    Serf {
        name: String,
        cmd: SerfCommand,
    },
    Kill {
        name: String,
        reply: Reply<Result<(), HostError>>,
    },
    Join {
        name: String,
        seeds: Vec<SocketAddr>,
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
        Command::Init { me } => shard.borrow_mut().core.me = Some(me),
        Command::Add { spec, serf, reply } => {
            let r = add(shard, spec, serf);
            let _ = reply.send(r);
        }
        Command::Serf { name, cmd } => serf_command(shard, name, cmd),
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
        Command::Join { name, seeds, reply } => {
            let mut guard = shard.borrow_mut();
            let core = &mut guard.core;
            let now = core.ctx.now();
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    let r = match core.members.get_mut(slot as usize) {
                        Some(Some(h)) => {
                            let seeds: Vec<SocketAddr> =
                                seeds.into_iter().filter(|&s| s != h.addr).collect();
                            if let Some(s) = h.serf.as_mut() {
                                s.serf.join_started();
                            }
                            h.member.join(now, &seeds).map_err(|e| HostError::Member {
                                name,
                                what: e.to_string(),
                            })
                        }
                        _ => Ok(()),
                    };
                    core.dirty.push(slot);
                    core.ctx.waker().notify();
                    r
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
                        match h.serf.as_mut() {
                            Some(s) => s.serf.leave(now, &mut h.member),
                            None => h.member.leave(now),
                        }
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
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    let r = match core.members.get_mut(slot as usize) {
                        Some(Some(h)) => {
                            h.member
                                .app_broadcast(payload)
                                .map_err(|e| HostError::Member {
                                    name,
                                    what: e.to_string(),
                                })
                        }
                        _ => Ok(()),
                    };
                    core.dirty.push(slot);
                    core.ctx.waker().notify();
                    r
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
                            let name = dir.name(node).to_string();
                            let serf = h.serf.as_ref();
                            Some(MemberInfo {
                                tags: serf
                                    .and_then(|_| ringleader_serf::decode_tags(&i.meta))
                                    .unwrap_or_default(),
                                status: serf.map_or_else(
                                    || MemberStatus::from_state(state),
                                    |s| s.status(&name, state),
                                ),
                                coordinate: serf.and_then(|s| s.coordinate(&name)),
                                name,
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

fn add(
    shard: &Rc<RefCell<Shard>>,
    spec: MemberSpec,
    serf: Option<Box<SerfStart>>,
) -> Result<SocketAddr, HostError> {
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
    let meta = match &serf {
        Some(s) => ringleader_serf::encode_tags(&s.opts.tags),
        None => spec.meta.clone(),
    };
    let member = Member::new(
        core.config.swim.clone(),
        core.dir.clone(),
        &spec.name,
        addr,
        &meta,
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
    let mut seeds: Vec<SocketAddr> = spec.seeds.iter().copied().filter(|s| *s != addr).collect();
    // A Serf snapshot's members are seeds too: the member rejoins whom it knew.
    if let Some(snap) = serf.as_ref().and_then(|s| s.snapshot.as_ref()) {
        for &(_, a) in &snap.members {
            if seeds.len() >= SNAPSHOT_SEEDS_MAX {
                break;
            }
            if a != addr && !seeds.contains(&a) {
                seeds.push(a);
            }
        }
    }
    let fail = |core: &mut super::Core, ring: &mut crate::transport::UdpRing, what: String| {
        ring.remove_socket(socket);
        core.unshare_listener(addr);
        Err(HostError::Member {
            name: spec.name.clone(),
            what,
        })
    };
    if !seeds.is_empty()
        && let Err(e) = member.join(now, &seeds)
    {
        return fail(core, ring, e.to_string());
    }
    let serf = match serf {
        None => None,
        Some(start) => {
            let seed = core.rng_seed.rotate_left(29);
            let keys = core
                .seal
                .as_ref()
                .as_ref()
                .map(|k| k.list())
                .unwrap_or_default();
            match SerfState::start(now, &mut member, seed, &keys, *start, !seeds.is_empty()) {
                Ok(s) => Some(Box::new(s)),
                Err(e) => return fail(core, ring, e.to_string()),
            }
        }
    };
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
        serf,
    });
    core.dirty.push(slot);
    core.ctx.waker().notify();
    Ok(addr)
}
