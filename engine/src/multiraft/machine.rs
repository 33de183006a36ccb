//! What a node's groups replicate: any [`StateMachine`] that says how (or whether) it
//! answers the key-value client protocol. The key-value store ([`Kv`]) answers all of it;
//! an embedding program's own machine may answer none of it and be driven only through
//! [`super::Server::propose`] and [`super::Server::read`].

use ringleader_wire::msg::client::{ClientOp, ClientResult, Consistency, ErrorCode};

use crate::kv::{Command, Get, KEY_BYTES_MAX, Kv, KvError, Output};
use crate::raft::driver::{ReadConsistency, StateMachine};

/// A client request, as a machine maps it.
#[derive(Debug)]
pub enum ClientCall<Q> {
    /// Propose `command` to the group owning `key`.
    Write {
        /// Routes the request to its group.
        key: Vec<u8>,
        /// The entry payload.
        command: Vec<u8>,
    },
    /// Read `query` from the group owning `key`.
    Read {
        /// Routes the request to its group.
        key: Vec<u8>,
        /// The query.
        query: Q,
        /// How.
        consistency: ReadConsistency,
    },
}

/// A state machine a node can host.
pub trait Machine: StateMachine + 'static
where
    Self::Output: Send,
    Self::Read: Send,
    Self::ReadOutput: Send,
{
    /// Maps a client-protocol request (sizes already checked against the node's bounds).
    /// The default refuses every request: the machine speaks no client protocol.
    fn client_call(op: ClientOp) -> Result<ClientCall<Self::Read>, ClientResult> {
        let _ = op;
        Err(ClientResult::Error {
            code: ErrorCode::Malformed,
            message: "this node's groups do not serve the key-value protocol".into(),
        })
    }

    /// The client-protocol answer to an applied command.
    fn client_output(output: Self::Output) -> ClientResult {
        let _ = output;
        ClientResult::Done
    }

    /// The client-protocol answer to a read.
    fn client_read(output: Self::ReadOutput) -> ClientResult {
        let _ = output;
        ClientResult::Value(None)
    }
}

fn consistency(c: Consistency) -> ReadConsistency {
    match c {
        Consistency::Linearizable => ReadConsistency::Linearizable,
        Consistency::Lease => ReadConsistency::Lease,
        Consistency::Stale => ReadConsistency::Stale,
    }
}

impl Machine for Kv {
    fn client_call(op: ClientOp) -> Result<ClientCall<Get>, ClientResult> {
        let (key, call) = match op {
            ClientOp::Put { key, value } => {
                let command = Command::Put {
                    key: key.clone(),
                    value,
                }
                .encode();
                (key.clone(), ClientCall::Write { key, command })
            }
            ClientOp::Delete { key } => {
                let command = Command::Delete { key: key.clone() }.encode();
                (key.clone(), ClientCall::Write { key, command })
            }
            ClientOp::Cas { key, expected, new } => {
                let command = Command::Cas {
                    key: key.clone(),
                    expected,
                    new,
                }
                .encode();
                (key.clone(), ClientCall::Write { key, command })
            }
            ClientOp::Get {
                key,
                consistency: c,
            } => (
                key.clone(),
                ClientCall::Read {
                    key: key.clone(),
                    query: Get { key },
                    consistency: consistency(c),
                },
            ),
            ClientOp::Info => {
                return Err(ClientResult::Error {
                    code: ErrorCode::Malformed,
                    message: "info is answered by the node".into(),
                });
            }
        };
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(ClientResult::Error {
                code: if key.is_empty() {
                    ErrorCode::Malformed
                } else {
                    ErrorCode::TooLarge
                },
                message: format!("keys must have 1 to {KEY_BYTES_MAX} bytes"),
            });
        }
        Ok(call)
    }

    fn client_output(output: Result<Output, KvError>) -> ClientResult {
        match output {
            Ok(Output::Done) => ClientResult::Done,
            Ok(Output::Cas(swapped)) => ClientResult::Cas { swapped },
            Err(e) => ClientResult::Error {
                code: ErrorCode::Malformed,
                message: format!("the command was refused: {e}"),
            },
        }
    }

    fn client_read(output: Option<Vec<u8>>) -> ClientResult {
        ClientResult::Value(output)
    }
}
