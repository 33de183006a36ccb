//! Five `ringleader-tools node` processes on loopback: they all see each other; one is
//! killed with SIGKILL and the other four report it `down`; one leaves on SIGTERM and the
//! rest report it `left`; every process asked to stop exits 0 after `stopped`.
//!
//! Members bind 127.74.0.1..5 on a per-run port (from this test's pid). Every wait has a
//! generous liveness bound and nothing asserts timing. Every child is started with
//! `--exit-after`, and a guard kills every child still running when the test ends (also on
//! failure). Runtime: ~10 s in release.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NODES: usize = 5;
const LIVENESS: Duration = Duration::from_secs(180);
const BROADCAST: &str = "hello-from-n5";

fn port() -> u16 {
    ringleader_engine::transport::port_base_below_ephemeral(1)
}

fn addr(i: usize) -> String {
    format!("127.74.0.{}:{}", i + 1, port())
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Kills (SIGKILL) and reaps every child still running when dropped.
struct Children(Vec<Option<Child>>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A line from child `.0` (`None`: its stdout closed).
type Line = (usize, Option<String>);

/// Everything the children printed, as parsed events.
#[derive(Default)]
struct Seen {
    lines: Vec<Vec<String>>,
    closed: Vec<bool>,
    /// (observer, event word, subject) for `up`, `down`, `left`, `joined`.
    events: HashSet<(usize, String, String)>,
    /// (observer, origin, payload) for `message`, with how many times each was printed.
    messages: HashMap<(usize, String, String), usize>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            lines: vec![Vec::new(); NODES],
            closed: vec![false; NODES],
            ..Seen::default()
        }
    }

    fn take(&mut self, (i, line): Line) {
        let Some(line) = line else {
            self.closed[i] = true;
            return;
        };
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            [
                "up" | "left" | "down" | "alive" | "suspect" | "reaped",
                who,
                ..,
            ] => {
                self.events
                    .insert((i, words[0].to_string(), who.to_string()));
            }
            ["joined", seed, outcome] => {
                self.events
                    .insert((i, "joined".to_string(), format!("{seed} {outcome}")));
            }
            ["message", origin, _from, payload] => {
                *self
                    .messages
                    .entry((i, origin.to_string(), payload.to_string()))
                    .or_default() += 1;
            }
            _ => {}
        }
        self.lines[i].push(line);
    }

    fn has(&self, observer: usize, word: &str, subject: &str) -> bool {
        self.events
            .contains(&(observer, word.to_string(), subject.to_string()))
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (i, lines) in self.lines.iter().enumerate() {
            s.push_str(&format!("--- {} ({}):\n", name(i), addr(i)));
            for l in lines {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

/// Reads lines until `done` holds; panics (with every child's output) after `LIVENESS`.
fn wait_until(
    rx: &mpsc::Receiver<Line>,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let start = Instant::now();
    while !done(seen) {
        assert!(
            start.elapsed() < LIVENESS,
            "not within {LIVENESS:?}: {what}\n{}",
            seen.dump()
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.take(l);
        }
    }
}

fn spawn(i: usize, join: Option<String>, tx: &mpsc::Sender<Line>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"));
    cmd.args(["node", "--bind", &addr(i), "--name", &name(i)])
        .args(["--config", "local"])
        .args(["--probe-interval-ms", "500", "--probe-timeout-ms", "200"])
        .args(["--push-pull-interval-ms", "3000"])
        .args(["--exit-after", "240s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(seed) = join {
        cmd.args(["--join", &seed]);
    }
    if i == NODES - 1 {
        cmd.args(["--broadcast", BROADCAST]);
    }
    let mut child = cmd.spawn().expect("spawn ringleader-tools node");
    let out = child.stdout.take().expect("stdout is piped");
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((i, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((i, None));
    });
    child
}

/// Waits for child `i` to exit (it was asked to), reading lines meanwhile.
fn wait_exit(
    children: &mut Children,
    i: usize,
    rx: &mpsc::Receiver<Line>,
    seen: &mut Seen,
) -> ExitStatus {
    let start = Instant::now();
    loop {
        let child = children.0[i].as_mut().expect("child still held");
        if let Some(status) = child.try_wait().expect("try_wait") {
            children.0[i] = None;
            return status;
        }
        assert!(
            start.elapsed() < LIVENESS,
            "{} did not exit within {LIVENESS:?}\n{}",
            name(i),
            seen.dump()
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.take(l);
        }
    }
}

fn sigterm(children: &Children, i: usize) {
    let pid = children.0[i].as_ref().expect("child still held").id();
    // SAFETY: kill(2) with a pid we own (not yet reaped, so not reused) and a valid signal.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {pid}");
}

#[test]
fn five_processes_detect_a_kill_and_a_leave() {
    let (tx, rx) = mpsc::channel::<Line>();
    let mut seen = Seen::new();
    let mut children = Children(Vec::with_capacity(NODES));

    // The seed first, bound before anyone joins through it.
    children.0.push(Some(spawn(0, None, &tx)));
    wait_until(&rx, &mut seen, "n1 listening", |s| {
        s.lines[0]
            .first()
            .is_some_and(|l| *l == format!("listening {} n1", addr(0)))
    });
    // n2..n4, then n5 (the broadcaster) once they see each other, so that its message is
    // sent into a cluster that is complete.
    for i in 1..NODES - 1 {
        children.0.push(Some(spawn(i, Some(addr(0)), &tx)));
    }
    let everyone_up =
        |s: &Seen, n: usize| (0..n).all(|i| (0..n).all(|j| i == j || s.has(i, "up", &name(j))));
    wait_until(&rx, &mut seen, "n1..n4 see each other up", |s| {
        everyone_up(s, NODES - 1)
    });
    children.0.push(Some(spawn(NODES - 1, Some(addr(0)), &tx)));
    wait_until(&rx, &mut seen, "all five see each other up", |s| {
        everyone_up(s, NODES)
    });
    for i in 1..NODES {
        assert!(
            seen.has(i, "joined", &format!("{} ok", addr(0))),
            "{} reports its join through the seed\n{}",
            name(i),
            seen.dump()
        );
    }
    for (i, lines) in seen.lines.iter().enumerate() {
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with(&format!("up {} ", name(i)))),
            "{} does not report itself up",
            name(i)
        );
    }
    // The broadcast reaches every peer (each member relays it), once each.
    let origin = name(NODES - 1);
    wait_until(&rx, &mut seen, "n5's broadcast reaches every peer", |s| {
        (0..NODES - 1).all(|i| {
            s.messages
                .contains_key(&(i, origin.clone(), BROADCAST.to_string()))
        })
    });
    assert!(
        seen.lines[NODES - 1].contains(&format!("sent {BROADCAST}")),
        "n5 reports its broadcast"
    );

    // A crash: SIGKILL n3 (not the seed); the four others declare it down.
    let victim = 2;
    {
        let c = children.0[victim].as_mut().expect("victim running");
        c.kill().expect("SIGKILL n3");
        c.wait().expect("reap n3");
        children.0[victim] = None;
    }
    let others: Vec<usize> = (0..NODES).filter(|&i| i != victim).collect();
    wait_until(&rx, &mut seen, "the four others report n3 down", |s| {
        others.iter().all(|&i| s.has(i, "down", &name(victim)))
    });
    let false_downs: Vec<_> = seen
        .events
        .iter()
        .filter(|(_, w, who)| w == "down" && *who != name(victim))
        .collect();
    assert!(
        false_downs.is_empty(),
        "only n3 is down: {false_downs:?}\n{}",
        seen.dump()
    );

    // A graceful leave: SIGTERM n5 alone; it exits 0 and the three left report it `left`.
    let leaver = NODES - 1;
    sigterm(&children, leaver);
    let status = wait_exit(&mut children, leaver, &rx, &mut seen);
    assert!(
        status.success(),
        "n5 exits 0 on SIGTERM: {status:?}\n{}",
        seen.dump()
    );
    let rest: Vec<usize> = (0..NODES).filter(|&i| i != victim && i != leaver).collect();
    wait_until(&rx, &mut seen, "n1, n2, n4 report n5 left", |s| {
        rest.iter().all(|&i| s.has(i, "left", &name(leaver)))
    });
    wait_until(&rx, &mut seen, "n5's output ends", |s| s.closed[leaver]);
    let tail: Vec<&str> = seen.lines[leaver]
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["leaving SIGTERM", "stopped"], "n5's last lines");
    for &i in &rest {
        assert!(
            !seen.has(i, "down", &name(leaver)),
            "{} saw n5 leave, not fail\n{}",
            name(i),
            seen.dump()
        );
    }

    // The rest stop on SIGTERM too, each with exit status 0.
    for &i in &rest {
        sigterm(&children, i);
    }
    for &i in &rest {
        let status = wait_exit(&mut children, i, &rx, &mut seen);
        assert!(
            status.success(),
            "{} exits 0 on SIGTERM: {status:?}\n{}",
            name(i),
            seen.dump()
        );
    }
    wait_until(&rx, &mut seen, "every output ends", |s| {
        rest.iter().all(|&i| s.closed[i])
    });
    for &i in &rest {
        assert_eq!(
            seen.lines[i].last().map(String::as_str),
            Some("stopped"),
            "{} ends with `stopped`",
            name(i)
        );
    }
    // Every peer printed n5's broadcast exactly once, though it was relayed by all.
    for i in 0..NODES - 1 {
        let times = seen
            .messages
            .get(&(i, origin.clone(), BROADCAST.to_string()))
            .copied()
            .unwrap_or(0);
        assert_eq!(times, 1, "{} printed the broadcast {times} times", name(i));
    }
}

/// Bad flags are refused before anything binds, with a message that says what to use.
#[test]
fn bad_flags_are_refused_clearly() {
    let refused = |extra: &[&str], want: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"));
        cmd.args(["node", "--bind", "127.74.1.1:1"]).args(extra);
        if !extra.contains(&"--exit-after") {
            // Should a bad flag be accepted, the node still stops by itself.
            cmd.args(["--exit-after", "5s"]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run ringleader-tools node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} is refused");
        assert!(
            out.stdout.is_empty(),
            "{extra:?}: nothing printed on stdout"
        );
        assert!(
            stderr.contains(want),
            "{extra:?}: stderr says {want:?}: {stderr}"
        );
    };
    refused(&["--config", "metro"], "use one of lan, local, wan");
    refused(&["--key", "abcd"], "64 hex digits");
    refused(&["--key", &"g".repeat(64)], "hex digits only");
    refused(&["--exit-after", "soon"], "unknown unit");
    refused(
        &["--probe-interval-ms", "100", "--probe-timeout-ms", "500"],
        "exceeds the probe interval",
    );
}
