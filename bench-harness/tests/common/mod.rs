//! Helpers shared by the cluster tests.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

/// Spawns `cmd` (a `ringleader-bench agent ...`) and waits for its "listening" line.
pub fn start_agent(mut cmd: Command) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting an agent");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("the agent says it listens");
    assert!(first.starts_with("agent listening on"), "{first:?}");
    child
}
