//! What a request can fail with: each error says what to do about it.

use std::net::SocketAddr;

use ringleader_wire::msg::client::ErrorCode;

/// Why no node could serve a request by its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Connecting failed everywhere the request was tried.
    #[error(
        "no node reachable at {}: is the server (`ringleader-tools server`) running there?",
        join_addrs(.addrs)
    )]
    NoNodeReachable {
        /// The addresses tried (shard addresses: base port + shard).
        addrs: Vec<SocketAddr>,
    },
    /// The group had no leader (an election was running, or the nodes asked did not know).
    #[error("no leader elected for group {group} yet: retry")]
    NoLeader {
        /// The key's group.
        group: u64,
    },
    /// The cluster (or this client's connection) stayed at its bounds.
    #[error(
        "the cluster stayed busy until the deadline (requests in flight at their bound): retry later, or send fewer at once"
    )]
    Busy,
    /// The nodes asked were shutting down.
    #[error("the nodes asked are shutting down: retry once they are back")]
    ShuttingDown,
    /// The request kept reaching shards that do not host its group.
    #[error("the cluster's shape keeps changing (wrong shard for group {group}): retry")]
    WrongShard {
        /// The key's group.
        group: u64,
    },
}

fn join_addrs(addrs: &[SocketAddr]) -> String {
    let s: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    s.join(", ")
}

/// Why a request failed. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could serve the request by its deadline.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// The request was sent and no answer came by its deadline.
    #[error(
        "no answer to the {op} within {timeout_ms} ms{}",
        if *maybe_applied {
            ": it may or may not have been applied (read the key before retrying)"
        } else {
            ": retry, or allow more time (--timeout-ms)"
        }
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline that passed.
        timeout_ms: u64,
        /// A write that may have been applied.
        maybe_applied: bool,
    },
    /// A write may or may not have taken effect.
    #[error(
        "the {op}'s outcome is unknown ({why}): read the key to see whether it was applied before retrying"
    )]
    Unknown {
        /// The operation.
        op: &'static str,
        /// What happened.
        why: String,
    },
    /// The server refused the request for good (too large, malformed, an internal failure).
    #[error("the server refused the {op} ({code:?}): {message}")]
    Rejected {
        /// The operation.
        op: &'static str,
        /// The server's code.
        code: ErrorCode,
        /// The server's message (cut to a line).
        message: String,
    },
    /// The server sent something this client cannot use.
    #[error("protocol error: {0}: are the client and the server the same version?")]
    Protocol(String),
    /// A local failure (a thread could not start, a bad argument).
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `pending_max` requests are pending already.
    #[error(
        "{pending_max} requests are pending in this client already: wait for some to complete, or raise ClientConfig::pending_max"
    )]
    Busy {
        /// The bound.
        pending_max: usize,
    },
    /// The client was dropped while the request was pending.
    #[error("the client was closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let e = ClientError::Unavailable(Unavailable::NoNodeReachable {
            addrs: vec!["127.0.0.1:7000".parse().unwrap()],
        });
        assert_eq!(
            e.to_string(),
            "no node reachable at 127.0.0.1:7000: is the server (`ringleader-tools server`) running there?"
        );
        let e = ClientError::Unavailable(Unavailable::NoLeader { group: 3 });
        assert_eq!(e.to_string(), "no leader elected for group 3 yet: retry");
    }
}
