//! Key management as internal queries: `install`, `use`, `remove` and `list` run on every
//! member's keyring, and the originator gathers who failed or did not answer.

use std::collections::BTreeMap;

use rand::Rng;
use ringleader_swim::{Member, MemberState};
use ringleader_time::Time;
use ringleader_wire::Message;
use ringleader_wire::msg::serf as wire;

use crate::KeyPending;
use crate::codec::{decode_key_request, encode_msg};
use crate::{Serf, SerfError};

/// Prefix of internal query names.
pub const INTERNAL_PREFIX: &str = "_serf_";

pub(crate) const KEY_INSTALL: &str = "_serf_install-key";
pub(crate) const KEY_USE: &str = "_serf_use-key";
pub(crate) const KEY_REMOVE: &str = "_serf_remove-key";
pub(crate) const KEY_LIST: &str = "_serf_list-keys";

/// Which key operation.
pub type KeyOp = wire::KeyOp;

/// The outcome of a key operation across the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyResult {
    /// Query id.
    pub id: u32,
    /// Members that answered.
    pub responses: usize,
    /// Members that answered with success.
    pub ok: usize,
    /// Members that answered with an error, with its message.
    pub failed: Vec<(String, String)>,
    /// Members that were alive when the operation began and did not answer.
    pub no_response: Vec<String>,
    /// For `list`: how many members hold each key.
    pub keys: BTreeMap<[u8; 32], usize>,
}
impl Serf {
    pub(crate) fn handle_internal(&mut self, name: &str, payload: &[u8]) -> Vec<u8> {
        let resp = match decode_key_request(payload) {
            None => wire::KeyResponse {
                ok: false,
                message: "malformed key request".into(),
                keys: vec![],
                primary: None,
            },
            Some(req) => self.apply_key_op(name, req),
        };
        encode_msg(&mut self.encoder, &Message::KeyResponse(resp))
    }

    fn apply_key_op(&mut self, name: &str, req: wire::KeyRequest) -> wire::KeyResponse {
        let fail = |m: String| wire::KeyResponse {
            ok: false,
            message: m,
            keys: vec![],
            primary: None,
        };
        let Some(ring) = self.keyring.as_mut() else {
            return fail("encryption is not enabled on this member".into());
        };
        let r = match (name, req.key) {
            (KEY_INSTALL, Some(k)) => ring.install(k),
            (KEY_USE, Some(k)) => ring.use_key(&k),
            (KEY_REMOVE, Some(k)) => ring.remove(&k),
            (KEY_LIST, _) => Ok(()),
            _ => return fail(format!("bad key request for {name}")),
        };
        match r {
            Ok(()) => wire::KeyResponse {
                ok: true,
                message: String::new(),
                keys: ring.list(),
                primary: Some(ring.primary()),
            },
            Err(e) => fail(e.to_string()),
        }
    }

    /// Installs `key` on every member (as a secondary key). The rotation is: install the new
    /// key everywhere, [`Serf::use_key`] it everywhere, then [`Serf::remove_key`] the old one
    /// once every member reports the new primary;
    /// [`SerfEvent::KeyResult`](crate::SerfEvent::KeyResult) names the members that failed or
    /// did not answer at each step. A member that was offline keeps only the old key: before it
    /// rejoins, install the new key on it locally (it is kept in its snapshot), or do not
    /// remove the old key until it has rejoined and been rotated.
    pub fn install_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_INSTALL, Some(key))
    }

    /// Makes `key` the primary on every member.
    pub fn use_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_USE, Some(key))
    }

    /// Removes `key` from every member (refused where it is the primary).
    pub fn remove_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_REMOVE, Some(key))
    }

    /// Lists the keys of every member.
    pub fn list_keys<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_LIST, None)
    }

    fn key_op<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        op: &str,
        key: Option<[u8; 32]>,
    ) -> Result<u32, SerfError> {
        let kop = match op {
            KEY_INSTALL => wire::KeyOp::Install,
            KEY_USE => wire::KeyOp::Use,
            KEY_REMOVE => wire::KeyOp::Remove,
            _ => wire::KeyOp::List,
        };
        let payload = encode_msg(
            &mut self.encoder,
            &Message::KeyRequest(wire::KeyRequest { op: kop, key }),
        );
        let expected = {
            let dir = member.directory().clone();
            let dir = dir.borrow();
            member
                .members()
                .filter(|&(_, state, _)| state == MemberState::Alive)
                .map(|(node, _, _)| dir.name(node).to_owned())
                .collect()
        };
        let pending = KeyPending {
            expected,
            result: KeyResult::default(),
        };
        let opts = crate::query::QueryOptions {
            request_ack: true,
            ..Default::default()
        };
        self.query_inner(now, member, op, &payload, opts, Some(pending))
    }
}
