//! Embedding Ringleader: one SWIM member in your own program.
//!
//! Starts a [`Node`], prints the membership events it sees for `--seconds` (default 30),
//! broadcasts one user message as soon as another member is up, then leaves gracefully (peers
//! see it `left`, not `down`).
//!
//! ```text
//! cargo build --release -p ringleader-engine --examples
//! # three terminals:
//! target/release/examples/node --bind 127.0.0.1:7946
//! target/release/examples/node --bind 127.0.0.2:7946 --join 127.0.0.1:7946
//! target/release/examples/node --bind 127.0.0.3:7946 --join 127.0.0.1:7946 --seconds 10
//! ```
//!
//! Flags: `--bind ADDR` (required), `--join ADDR` (repeatable), `--name NAME` (default:
//! the bind address), `--seconds N`. Ctrl-C stops the process without leaving: the others
//! will detect it as failed (`down`) — which is also a way to watch failure detection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringleader_engine::Node;
use ringleader_engine::host::Event;
use ringleader_engine::swim::Config;

/// What the command line asks for.
struct Args {
    bind: SocketAddr,
    joins: Vec<SocketAddr>,
    name: Option<String>,
    seconds: u64,
}

fn usage() -> String {
    "usage: node --bind ADDR [--join ADDR]... [--name NAME] [--seconds N]".to_string()
}

/// A deliberately small parser: the engine has no command-line dependency.
fn parse_args() -> Result<Args, String> {
    let mut bind = None;
    let mut joins = Vec::new();
    let mut name = None;
    let mut seconds = 30;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--bind" => bind = Some(parse_addr(&value()?)?),
            "--join" => joins.push(parse_addr(&value()?)?),
            "--name" => name = Some(value()?),
            "--seconds" => {
                let v = value()?;
                seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds: `{v}` is not a whole number"))?;
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown flag `{other}`\n{}", usage())),
        }
    }
    let bind = bind.ok_or_else(|| format!("--bind is required\n{}", usage()))?;
    Ok(Args {
        bind,
        joins,
        name,
        seconds,
    })
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:7946"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let name = args.name.unwrap_or_else(|| args.bind.to_string());

    // 1. Build and start the member. `start` binds the UDP socket and the TCP listener
    //    (push-pull, fallback probes) on one shard thread of its own, then joins through
    //    the seeds in the background: the outcome arrives as an `Event::Joined`.
    //    Other knobs: `.keys(..)` (AES-256-GCM), `.label(..)` (cluster label), `.meta(..)`
    //    (tags others see), `.events(mask)`, `.host_config(|c| ..)` for every bound.
    let node = match Node::builder(&name)
        .bind(args.bind)
        .seeds(args.joins)
        .config(Config::lan())
        .meta(b"role=example".to_vec())
        .start()
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot start {name} on {}: {e}", args.bind);
            std::process::exit(1);
        }
    };
    println!("{} listening on {}", node.name(), node.addr());

    // 2. Consume events. `events()` is a bounded crossbeam channel filled by the shard; the
    //    shard never waits for us, so a consumer that falls behind loses events (counted in
    //    `node.census(..)`). Read it from one thread, promptly.
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut greeted = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let e = match node
            .events()
            .recv_timeout(left.min(Duration::from_millis(500)))
        {
            Ok(e) => e,
            Err(e) if e.is_timeout() => continue,
            Err(_) => {
                eprintln!("the node stopped");
                std::process::exit(1);
            }
        };
        match &e.event {
            Event::Up(m) => {
                println!(
                    "up {} at {} ({})",
                    m.name,
                    m.addr,
                    String::from_utf8_lossy(&m.meta)
                );
                // 3. Broadcast: the message is gossiped (every member that receives it relays
                //    it on its own piggyback queue) and each member delivers it once, as
                //    `Event::Message` with `origin` set to this member's name.
                if !greeted {
                    greeted = true;
                    let hello = format!("hello from {}", node.name());
                    if let Err(err) = node.broadcast(hello.into_bytes()) {
                        eprintln!("broadcast failed: {err}");
                    }
                }
            }
            Event::Suspect { member, by } => println!("suspect {} (by {by})", member.name),
            Event::AliveAgain(m) => println!("alive again {}", m.name),
            Event::Down { member, by } => println!("down {} (by {by})", member.name),
            Event::Left(m) => println!("left {}", m.name),
            Event::Updated(m) => println!("updated {} at {}", m.name, m.addr),
            Event::Reaped(m) => println!("reaped {}", m.name),
            Event::Message {
                from,
                origin,
                payload,
            } => {
                let origin = origin.as_deref().unwrap_or("(direct)");
                println!(
                    "message from {origin} (via {from}): {}",
                    String::from_utf8_lossy(payload)
                );
            }
            Event::Joined { seed, ok } => {
                println!("join through {seed}: {}", if *ok { "ok" } else { "failed" });
            }
            // Serf events (this example runs without the Serf layer).
            Event::User { .. } | Event::Query(_) => {}
        }
    }

    // 4. Who is there, as this member sees it (itself included).
    match node.members() {
        Ok(members) => {
            for m in members {
                let state = ringleader_engine::host::member_state_name(m.state);
                println!("member {} {} {state}", m.name, m.addr);
            }
        }
        Err(e) => eprintln!("members: {e}"),
    }

    // 5. Leave gracefully: the leave is gossiped until sent enough times (or the linger
    //    bound passes), then the shard stops. Dropping `node` instead is a crash.
    println!("leaving");
    if let Err(e) = node.leave() {
        eprintln!("leave failed: {e}");
        std::process::exit(1);
    }
}
