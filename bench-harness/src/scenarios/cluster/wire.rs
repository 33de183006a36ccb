//! The agent protocol: newline-delimited JSON on one TCP connection per agent, every read
//! and write bounded by a deadline and every line by [`LINE_BYTES_MAX`].
//!
//! ```text
//! coordinator                                   agent
//!   {"type":"hello","version":1,"token":T}  ─▶
//!                                           ◀─  {"type":"welcome",...} | {"type":"refused","reason":...}
//!   {"type":"step","step":S,"wait_ms":W,"data":{...}}  ─▶   (prepare, converge, leaders, run)
//!                                           ◀─  {"type":"done","data":{...}} | {"type":"failed","error":...}
//!   ... more steps; closing the connection ends the run (the agent stops what it started)
//! ```
//!
//! This module only frames and parses; it never starts anything.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version both sides must speak.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest line either side accepts (a reply carries histograms: a few hundred KiB).
pub const LINE_BYTES_MAX: usize = 64 << 20;
/// How long a connection may take to say hello.
pub const HELLO_WAIT: Duration = Duration::from_secs(10);

/// What the coordinator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// The first line: who is asking.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The token the agent was started with.
        token: String,
    },
    /// One phase of the run.
    Step {
        /// `prepare`, then the scenario's phases.
        step: String,
        /// How long the agent may take (it answers `failed` rather than overrun).
        wait_ms: u64,
        /// The phase's parameters.
        data: Value,
    },
}

/// What an agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// The hello was accepted.
    Welcome {
        /// The agent's host name.
        hostname: String,
        /// CPUs the agent may use.
        cores: usize,
        /// The address the agent's members and nodes bind.
        bind_ip: IpAddr,
    },
    /// The hello was refused, and why; the agent closes the connection.
    Refused {
        /// Why.
        reason: String,
    },
    /// A step finished.
    Done {
        /// Its results.
        data: Value,
    },
    /// A step failed; the agent has stopped what the run had started.
    Failed {
        /// Why.
        error: String,
    },
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection.
    #[error("the connection closed")]
    Closed,
    /// Nothing complete arrived by the deadline.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// A line longer than [`LINE_BYTES_MAX`].
    #[error("a line longer than {LINE_BYTES_MAX} bytes")]
    TooLong,
    /// A line that is not the JSON expected.
    #[error("garbage on the connection ({why}): {start:?}")]
    Garbage {
        /// The parser's complaint.
        why: String,
        /// The line's first bytes.
        start: String,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One side of a connection speaking the protocol.
#[derive(Debug)]
pub struct Line {
    reader: BufReader<TcpStream>,
    peer: SocketAddr,
}

impl Line {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> io::Result<Line> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Line {
            reader: BufReader::new(stream),
            peer,
        })
    }

    /// The other side's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Another handle on the connection (to shut it from another thread).
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.reader.get_ref().try_clone()
    }

    /// Writes `msg` as one line, by `deadline`.
    pub fn send<T: Serialize>(&mut self, msg: &T, deadline: Instant) -> io::Result<()> {
        let mut text = serde_json::to_vec(msg).map_err(io::Error::other)?;
        text.push(b'\n');
        let stream = self.reader.get_mut();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_write_timeout(Some(wait))?;
        stream.write_all(&text)?;
        stream.flush()
    }

    /// Reads one line and parses it as a `T`, by `deadline`.
    pub fn recv<T: DeserializeOwned>(&mut self, deadline: Instant) -> Result<T, RecvError> {
        let started = Instant::now();
        let mut line: Vec<u8> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::TimedOut(started.elapsed()));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                return Err(RecvError::Closed);
            }
            let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > LINE_BYTES_MAX {
                return Err(RecvError::TooLong);
            }
            line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if complete {
                break;
            }
        }
        serde_json::from_slice(&line).map_err(|e| RecvError::Garbage {
            why: e.to_string(),
            start: String::from_utf8_lossy(&line[..line.len().min(80)])
                .trim_end()
                .to_owned(),
        })
    }
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cres", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }

    #[test]
    fn lines_round_trip_and_garbage_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"{\"type\":\"refused\",\"reason\":\"x\"}\nnot json\n")
                .expect("write");
            s.write_all(&[b'a'; 1024]).expect("write");
        });
        let (s, _) = listener.accept().expect("accept");
        let mut line = Line::new(s).expect("line");
        let deadline = Instant::now() + Duration::from_secs(10);
        let first: FromAgent = line.recv(deadline).expect("a message");
        assert!(matches!(first, FromAgent::Refused { reason } if reason == "x"));
        let second = line.recv::<FromAgent>(deadline);
        assert!(
            matches!(&second, Err(RecvError::Garbage { start, .. }) if start == "not json"),
            "{second:?}"
        );
        client.join().expect("client");
        // The rest has no newline and the peer closed.
        assert!(matches!(
            line.recv::<FromAgent>(deadline),
            Err(RecvError::Closed)
        ));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _peer = TcpStream::connect(addr).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        let mut line = Line::new(s).expect("line");
        let r = line.recv::<FromAgent>(Instant::now() + Duration::from_millis(100));
        assert!(matches!(r, Err(RecvError::TimedOut(_))), "{r:?}");
    }
}
