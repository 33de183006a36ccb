//! The agent's refusals and the coordinator's errors, on loopback: an agent without a token
//! does not start; a wrong token, garbage or a second hello is refused with the reason and
//! the agent takes the next connection; a coordinator names the agent that is not there or
//! answers garbage. Every process stops by itself (`--exit-after`). About a second.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output};
use std::time::Duration;

mod common;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringleader-bench"))
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// An agent on loopback, killed when dropped (it also stops by itself).
struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Agent {
    fn start(token: &str) -> Agent {
        let addr = free_addr();
        let mut cmd = bench();
        cmd.args(["agent", "--listen", &addr.to_string(), "--token", token])
            .args(["--exit-after", "60s"]);
        let child = common::start_agent(cmd);
        Agent { child, addr }
    }

    /// Sends `lines` raw and returns the agent's first answer line.
    fn exchange(&self, lines: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(lines.as_bytes()).expect("write");
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).expect("an answer");
        answer
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(agents: &str, token: &str) -> Output {
    bench()
        .args([
            "cluster",
            "--agents",
            agents,
            "--token",
            token,
            "--connect-timeout",
            "5s",
        ])
        .args(["swim", "--members", "10", "--duration", "1s"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running the coordinator")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_agent_without_a_token_refuses_to_start() {
    let out = bench()
        .args(["agent", "--listen", "127.0.0.1:0", "--exit-after", "5s"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing to start without --token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_tokens_and_garbage_are_refused_and_the_agent_carries_on() {
    let agent = Agent::start("s3cret");
    // A coordinator with the wrong token fails, saying which agent refused and why.
    let out = cluster(&agent.addr.to_string(), "guess");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "agent 1 ({}) refused the run: wrong token",
            agent.addr
        )),
        "{err}"
    );
    // Garbage instead of hello.
    let a = agent.exchange("GET / HTTP/1.1\r\n\r\n");
    assert!(a.contains("\"refused\"") && a.contains("no hello"), "{a}");
    // A step before hello.
    let a = agent.exchange("{\"type\":\"step\",\"step\":\"prepare\",\"wait_ms\":1,\"data\":{}}\n");
    assert!(a.contains("a step before hello"), "{a}");
    // A good hello still works, and a bad step after it is answered with the reason: an
    // unknown scenario, or flags asking for help (which must not end the agent).
    for (data, reason) in [
        (r#"{"scenario":"chess"}"#, "unknown scenario"),
        (
            r#"{"scenario":"swim","args":["swim","--help"]}"#,
            "Usage: swim",
        ),
    ] {
        let mut s = TcpStream::connect(agent.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(b"{\"type\":\"hello\",\"version\":1,\"token\":\"s3cret\"}\n")
            .expect("write");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("welcome");
        assert!(line.contains("\"welcome\""), "{line}");
        let step = format!(
            "{{\"type\":\"step\",\"step\":\"prepare\",\"wait_ms\":1000,\"data\":{data}}}\n"
        );
        s.write_all(step.as_bytes()).expect("write");
        line.clear();
        r.read_line(&mut line).expect("an answer");
        assert!(
            line.contains("\"failed\"") && line.contains(reason),
            "{line}"
        );
    }
    // And the agent takes the next coordinator: bad scenario flags are the coordinator's
    // error before anything runs; a refused token again proves the agent is still there.
    let out = cluster(&agent.addr.to_string(), "again-wrong");
    assert!(stderr(&out).contains("wrong token"), "{}", stderr(&out));
}

#[test]
fn the_coordinator_names_an_agent_that_is_not_there_or_answers_garbage() {
    let nobody = free_addr();
    let out = cluster(&nobody.to_string(), "t");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("agent 1 ({nobody}): cannot connect")),
        "{err}"
    );

    // A fake agent that answers hello with garbage.
    let fake = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = fake.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut s, _) = fake.accept().expect("accept");
        let mut hello = String::new();
        BufReader::new(s.try_clone().expect("clone"))
            .read_line(&mut hello)
            .expect("hello");
        s.write_all(b"\x00\x01 not json\n").expect("write");
    });
    let out = cluster(&addr.to_string(), "t");
    server.join().expect("fake agent");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("agent 1 ({addr}): no answer to hello: garbage")),
        "{err}"
    );

    // Bad flags are refused before any agent is contacted.
    let out = bench()
        .args(["cluster", "--agents", &nobody.to_string(), "--token", "t"])
        .args(["swim", "--members", "1"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("runs");
    assert!(
        stderr(&out).contains("--members must be in"),
        "{}",
        stderr(&out)
    );
    let out = bench()
        .args(["cluster", "--agents", &nobody.to_string(), "--token", "t"])
        .args(["raft", "--bogus"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("runs");
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
}
