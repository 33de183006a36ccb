//! Serf on a live member: the embedding API's types (options, queries and their responses,
//! the responder handed with each incoming query, key-operation reports, coordinates) and
//! the files a Serf member keeps (its snapshot and its keyring file).
//!
//! What it is for: the application's side of [`ringleader_serf`] running beside a hosted
//! member (the shard side is `shard/serf_io.rs`). Every protocol decision stays in the
//! sans-IO crate; this module only carries requests to the shard and answers back.
//!
//! What it must never do: panic on a damaged file (a snapshot or keyring file that does not
//! parse is refused with an error naming the file and what is wrong), write key material
//! to a file anyone but its owner can read, or block a shard on the disk (files are written
//! by a thread of their own, atomically: temporary file, fsync, rename, directory fsync).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringleader_wire::keyring::{KEY_LEN, KEYS_MAX};
use serde::Serialize;

pub use ringleader_serf::{KeyResult, SerfConfig, SerfError};

use super::HostError;
use super::shard::{Command, SerfCommand};
use crate::runtime::CommandSender;

/// How a member runs its Serf layer (see [`super::Host::add_with`] and
/// [`super::NodeBuilder::serf`]).
#[derive(Debug, Clone)]
pub struct SerfOptions {
    /// The Serf layer's limits and tuning.
    pub config: SerfConfig,
    /// Tags at start (carried as the member's metadata; change them with `set_tags`).
    pub tags: BTreeMap<String, String>,
    /// Where the snapshot is kept (none: no snapshot). With an existing snapshot the
    /// member rejoins the members it knew and does not replay old events.
    pub snapshot_path: Option<PathBuf>,
    /// How often the snapshot is written (it is also written at leave).
    pub snapshot_interval_ms: u64,
    /// The keyring file, rewritten after every key change so a rotation survives a
    /// restart ([`super::NodeBuilder::keyring_file`] also loads it at start).
    pub keyring_path: Option<PathBuf>,
    /// How often the Serf layer is ticked (query deadlines, push-pull clocks).
    pub tick_interval_ms: u64,
}

impl Default for SerfOptions {
    fn default() -> Self {
        SerfOptions {
            config: SerfConfig::default(),
            tags: BTreeMap::new(),
            snapshot_path: None,
            snapshot_interval_ms: 5_000,
            keyring_path: None,
            tick_interval_ms: 100,
        }
    }
}

impl SerfOptions {
    /// Refuses values that cannot work, saying which field to change.
    pub fn check(&self) -> Result<(), HostError> {
        if self.snapshot_interval_ms == 0 {
            return Err(HostError::Config(
                "serf snapshot_interval_ms must be at least 1".into(),
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(HostError::Config(
                "serf tick_interval_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A member's status as Serf reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Alive.
    Alive,
    /// Suspected of having failed.
    Suspect,
    /// Declared dead (not left).
    Failed,
    /// Left gracefully, or forced out with `force_leave`.
    Left,
}

impl MemberStatus {
    /// The status a SWIM state means without Serf's intents.
    pub fn from_state(s: ringleader_wire::msg::swim::MemberState) -> MemberStatus {
        use ringleader_wire::msg::swim::MemberState as S;
        match s {
            S::Alive => MemberStatus::Alive,
            S::Suspect => MemberStatus::Suspect,
            S::Dead => MemberStatus::Failed,
            S::Left => MemberStatus::Left,
        }
    }

    /// `alive`, `suspect`, `failed` or `left`.
    pub fn name(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Failed => "failed",
            MemberStatus::Left => "left",
        }
    }
}

/// A Vivaldi network coordinate (seconds). Compared bit for bit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Coordinates {
    /// Euclidean part.
    pub vec: [f64; 8],
    /// Confidence (lower is better).
    pub error: f64,
    /// Adjustment term.
    pub adjustment: f64,
    /// Height (the access link's part).
    pub height: f64,
}

impl PartialEq for Coordinates {
    fn eq(&self, o: &Self) -> bool {
        let bits = |c: &Coordinates| {
            let mut v = [0u64; 11];
            for (i, x) in c.vec.iter().enumerate() {
                v[i] = x.to_bits();
            }
            v[8] = c.error.to_bits();
            v[9] = c.adjustment.to_bits();
            v[10] = c.height.to_bits();
            v
        };
        bits(self) == bits(o)
    }
}

impl Eq for Coordinates {}

impl From<&ringleader_wire::msg::swim::Coordinate> for Coordinates {
    fn from(c: &ringleader_wire::msg::swim::Coordinate) -> Self {
        Coordinates {
            vec: c.vec,
            error: c.error,
            adjustment: c.adjustment,
            height: c.height,
        }
    }
}

impl Coordinates {
    fn wire(&self) -> ringleader_wire::msg::swim::Coordinate {
        ringleader_wire::msg::swim::Coordinate {
            vec: self.vec,
            error: self.error,
            adjustment: self.adjustment,
            height: self.height,
        }
    }

    /// The round trip to a member at `other`, as Vivaldi estimates it.
    pub fn rtt_to(&self, other: &Coordinates) -> Duration {
        let s = ringleader_serf::vivaldi::estimate_rtt(&self.wire(), &other.wire());
        Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 })
    }
}

/// The Serf layers' counters of one shard (see [`super::ShardCensus::serf`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SerfCounters {
    /// Hosted members running Serf.
    pub members: usize,
    /// User events delivered.
    pub events_delivered: u64,
    /// User events seen again and dropped.
    pub events_duplicate: u64,
    /// User events refused as too old (before the join, or older than the buffer).
    pub events_too_old: u64,
    /// Queries delivered or handled internally.
    pub queries_delivered: u64,
    /// Queries seen again and dropped.
    pub queries_duplicate: u64,
    /// Query responses sent.
    pub responses_sent: u64,
    /// Query responses relayed for others.
    pub relays: u64,
    /// Messages refused (malformed, over a bound) or stale intents.
    pub refused: u64,
    /// Serf events dropped because its queue for the shard was full.
    pub events_dropped: u64,
    /// Query replies the application's stream had no room for.
    pub query_replies_dropped: u64,
    /// Periodic snapshots skipped because the writer was behind.
    pub snapshots_skipped: u64,
}

/// How a query is issued.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    /// Only these members answer (empty: no filter on names).
    pub filter_nodes: Vec<String>,
    /// Only members whose tag (first) matches the regular expression (second) answer;
    /// every filter must match. For an exact match anchor it: `^web$`.
    pub filter_tags: Vec<(String, String)>,
    /// When to stop listening (default: Serf's formula, gossip interval × 16 ×
    /// ⌈log10(n + 1)⌉).
    pub timeout: Option<Duration>,
    /// Ask each matching member for an ack as it receives the query.
    pub request_ack: bool,
    /// Members that relay each answer besides the direct send (default: the config's).
    pub relay_factor: Option<u8>,
}

impl QueryParams {
    pub(crate) fn options(&self) -> ringleader_serf::QueryOptions {
        use ringleader_wire::msg::serf::{QueryFilter, TagFilter};
        let mut filters = Vec::new();
        if !self.filter_nodes.is_empty() {
            filters.push(QueryFilter::Nodes(self.filter_nodes.clone()));
        }
        for (tag, expr) in &self.filter_tags {
            filters.push(QueryFilter::Tag(TagFilter {
                tag: tag.clone(),
                expr: expr.clone(),
            }));
        }
        ringleader_serf::QueryOptions {
            filters,
            timeout: self.timeout,
            request_ack: self.request_ack,
            relay_factor: self.relay_factor,
        }
    }
}

/// What comes back for a query this member issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryReply {
    /// A member received the query (with `request_ack`).
    Ack {
        /// The member.
        from: String,
    },
    /// A member answered.
    Response {
        /// The member.
        from: String,
        /// Its answer.
        payload: Vec<u8>,
    },
    /// The query's time is up: nothing more will come.
    Done {
        /// Distinct members that answered.
        responses: usize,
        /// Distinct members that acked.
        acks: usize,
    },
}

/// The responses to a query, as they arrive ([`super::Node::query`]). Iterating yields
/// acks and responses and ends after the query's deadline (at [`QueryReply::Done`], or
/// when the shard has stopped).
#[derive(Debug)]
pub struct QueryStream {
    pub(crate) id: u32,
    pub(crate) rx: crossbeam_channel::Receiver<QueryReply>,
    pub(crate) deadline: Instant,
    pub(crate) done: bool,
}

/// How long after a query's deadline its stream waits for the shard's final word.
const QUERY_GRACE: Duration = Duration::from_secs(5);

impl QueryStream {
    /// The query's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// When the originator stops listening.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the query's time is up (its [`QueryReply::Done`] was seen).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Waits for everything and returns the responses `(from, payload)` and the ackers.
    pub fn collect_all(self) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
        let mut responses = Vec::new();
        let mut acks = Vec::new();
        for r in self {
            match r {
                QueryReply::Response { from, payload } => responses.push((from, payload)),
                QueryReply::Ack { from } => acks.push(from),
                QueryReply::Done { .. } => {}
            }
        }
        (responses, acks)
    }
}

impl Iterator for QueryStream {
    type Item = QueryReply;

    fn next(&mut self) -> Option<QueryReply> {
        if self.done {
            return None;
        }
        let until = self.deadline + QUERY_GRACE;
        match self.rx.recv_deadline(until) {
            Ok(r) => {
                if matches!(r, QueryReply::Done { .. }) {
                    self.done = true;
                }
                Some(r)
            }
            Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

/// A query that reached this member and matches its filters ([`super::Event::Query`]):
/// answer it with [`IncomingQuery::respond`] before its deadline.
#[derive(Clone)]
pub struct IncomingQuery {
    /// Query id (unique per originator).
    pub id: u32,
    /// Query Lamport time.
    pub ltime: u64,
    /// Name.
    pub name: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// The member that issued it.
    pub source: String,
    /// After this the originator ignores answers.
    pub deadline: Instant,
    pub(crate) local: String,
    pub(crate) handle: ringleader_serf::QueryHandle,
    pub(crate) shard: CommandSender<Command>,
}

impl std::fmt::Debug for IncomingQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingQuery")
            .field("id", &self.id)
            .field("ltime", &self.ltime)
            .field("name", &self.name)
            .field("source", &self.source)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl PartialEq for IncomingQuery {
    fn eq(&self, o: &Self) -> bool {
        (
            self.id,
            self.ltime,
            &self.source,
            &self.name,
            &self.payload,
            &self.local,
        ) == (o.id, o.ltime, &o.source, &o.name, &o.payload, &o.local)
    }
}

impl Eq for IncomingQuery {}

impl IncomingQuery {
    /// Answers the query (Serf's `Query.Respond`): sent straight to the originator (and
    /// through `relay_factor` members). Refused with the Serf layer's reason (payload over
    /// `response_bytes_max`); an answer after the deadline is dropped silently, as Serf
    /// does.
    pub fn respond(&self, payload: Vec<u8>) -> Result<(), HostError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = Command::Serf {
            name: self.local.clone(),
            cmd: SerfCommand::Respond {
                query: self.handle.clone(),
                payload,
                reply: tx,
            },
        };
        if self.shard.send(cmd).is_err() {
            return Err(HostError::Stopped);
        }
        match rx.recv_timeout(super::REPLY_WAIT) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(HostError::Timeout(0, super::REPLY_WAIT))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(HostError::Stopped),
        }
    }
}

/// Which key operation a [`KeyReport`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyOp {
    /// Install a key as a secondary.
    Install,
    /// Make a key the primary.
    Use,
    /// Remove a key.
    Remove,
    /// List every member's keys.
    List,
}

/// The outcome of a cluster-wide key operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// The operation.
    pub op: KeyOp,
    /// Members alive when it began (every one was asked).
    pub members: usize,
    /// Members that answered.
    pub responses: usize,
    /// Members that answered with success.
    pub ok: usize,
    /// Members that refused, with their reason.
    pub failed: Vec<(String, String)>,
    /// Members that did not answer before the deadline.
    pub no_response: Vec<String>,
    /// For `list`: each key (base64) with the number of members holding it.
    pub keys: BTreeMap<String, usize>,
}

impl KeyReport {
    pub(crate) fn new(op: KeyOp, members: usize, r: KeyResult) -> KeyReport {
        KeyReport {
            op,
            members,
            responses: r.responses,
            ok: r.ok,
            failed: r.failed,
            no_response: r.no_response,
            keys: r.keys.iter().map(|(k, n)| (encode_key(k), *n)).collect(),
        }
    }

    /// Every member asked succeeded.
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.no_response.is_empty()
    }

    /// What went wrong, for an operator: which members failed (and why) or did not answer.
    pub fn summary(&self) -> String {
        if self.succeeded() {
            return format!("{} of {} members ok", self.ok, self.members);
        }
        let mut s = format!(
            "{} of {} members ok; {} failed, {} did not answer",
            self.ok,
            self.members,
            self.failed.len(),
            self.no_response.len()
        );
        for (m, why) in &self.failed {
            s.push_str(&format!("; {m}: {why}"));
        }
        if !self.no_response.is_empty() {
            s.push_str(&format!("; no answer from {}", self.no_response.join(", ")));
        }
        s
    }
}

// ----- keys as text and the keyring file -----------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A key as standard base64 (the text `serf keygen` prints and Serf's keyring file holds).
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    let mut out = String::with_capacity(44);
    for chunk in key.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A key from standard base64 text; the error says what is wrong.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let t = text.trim().trim_end_matches('=');
    let mut bytes = Vec::with_capacity(33);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in t.bytes() {
        let v = B64
            .iter()
            .position(|&b| b == c)
            .ok_or_else(|| format!("{c:?} is not a base64 character"))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "a key is {KEY_LEN} bytes (44 base64 characters); this one is {} bytes",
            bytes.len()
        )
    })
}

/// Reads a keyring file: a JSON array of base64 keys, primary first (Serf's format).
/// `Ok(None)` if there is no file; an error naming the file and the problem otherwise.
pub fn read_keyring_file(path: &Path) -> Result<Option<Vec<[u8; KEY_LEN]>>, HostError> {
    let bad = |what: String| HostError::Keyring {
        path: path.to_path_buf(),
        what,
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    let list: Vec<String> = serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "not a JSON array of base64 keys ({e}); expected e.g. [\"<44 base64 characters>\"]"
        ))
    })?;
    if list.is_empty() {
        return Err(bad("it holds no key; the first key is the primary".into()));
    }
    if list.len() > KEYS_MAX {
        return Err(bad(format!(
            "it holds {} keys; a keyring holds at most {KEYS_MAX}",
            list.len()
        )));
    }
    let mut keys = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let key = decode_key(k).map_err(|e| bad(format!("key {i}: {e}")))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(Some(keys))
}

/// The keyring file's bytes for `keys` (primary first).
pub(crate) fn keyring_file_bytes(keys: &[[u8; KEY_LEN]]) -> Vec<u8> {
    let list: Vec<String> = keys.iter().map(encode_key).collect();
    let mut b = serde_json::to_vec_pretty(&list).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Writes a keyring file atomically with mode 0600.
pub fn write_keyring_file(path: &Path, keys: &[[u8; KEY_LEN]]) -> Result<(), HostError> {
    ringleader_serf::snapshot::write_bytes(path, &keyring_file_bytes(keys), true).map_err(|e| {
        HostError::Keyring {
            path: path.to_path_buf(),
            what: format!("cannot write it: {e}"),
        }
    })
}

/// Reads a snapshot: `Ok(None)` if there is none; an error naming the file and what is
/// wrong if it is damaged (the member is not started from a snapshot it cannot trust).
pub fn read_snapshot(
    path: &Path,
) -> Result<Option<ringleader_serf::snapshot::SnapshotState>, HostError> {
    ringleader_serf::snapshot::read(path).map_err(|e| HostError::Snapshot {
        path: path.to_path_buf(),
        what: format!("{e}; move it away to start without it"),
    })
}

/// A file write for the writer thread: path, bytes, whether it holds secrets, and who
/// waits for it.
pub(crate) struct FileJob {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) secret: bool,
    pub(crate) then: Option<crossbeam_channel::Sender<Result<(), HostError>>>,
}

/// Files written in order by a thread of their own, so a shard never waits for a disk.
/// Dropping it lets the thread finish what is queued and end.
pub(crate) struct FileWriter {
    tx: crossbeam_channel::Sender<FileJob>,
}

/// Writes a member may have queued at once (periodic snapshots beyond it are skipped).
const FILE_JOBS_MAX: usize = 8;

impl FileWriter {
    pub(crate) fn start(name: &str) -> Result<FileWriter, HostError> {
        let (tx, rx) = crossbeam_channel::bounded::<FileJob>(FILE_JOBS_MAX);
        std::thread::Builder::new()
            .name(format!("serf-files-{name}"))
            .spawn(move || {
                for job in rx {
                    let r =
                        ringleader_serf::snapshot::write_bytes(&job.path, &job.bytes, job.secret)
                            .map_err(|e| HostError::Snapshot {
                                path: job.path.clone(),
                                what: format!("cannot write it: {e}"),
                            });
                    if let Err(e) = &r {
                        tracing::warn!("{e}");
                    }
                    if let Some(then) = job.then {
                        let _ = then.send(r);
                    }
                }
            })
            .map_err(|e| HostError::Config(format!("cannot start the snapshot writer: {e}")))?;
        Ok(FileWriter { tx })
    }

    /// Queues a write; gives the job back if the queue is full.
    pub(crate) fn write(&self, job: FileJob) -> Result<(), FileJob> {
        self.tx.try_send(job).map_err(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64() {
        for seed in 0..=255u8 {
            let key: [u8; 32] =
                std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8));
            let text = encode_key(&key);
            assert_eq!(text.len(), 44);
            assert_eq!(decode_key(&text), Ok(key));
        }
        // The well-known example key of Serf's documentation.
        let k = decode_key("cg8StVXbQJ0gPvMd9o7yrg==");
        assert!(k.is_err(), "16-byte keys are refused: AES-256 needs 32");
        assert!(decode_key("not base64!").is_err());
    }

    #[test]
    fn a_damaged_keyring_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("keyring.json");
        assert!(read_keyring_file(&p).expect("absent is fine").is_none());
        for bad in [&b"{"[..], b"[]", b"[\"abc\"]", b"[1]", b"\xff\xfe"] {
            std::fs::write(&p, bad).expect("write");
            let e = read_keyring_file(&p).expect_err("refused");
            assert!(e.to_string().contains("keyring.json"), "{e}");
        }
        write_keyring_file(&p, &[[1; 32], [2; 32]]).expect("write");
        assert_eq!(
            read_keyring_file(&p).expect("reads"),
            Some(vec![[1; 32], [2; 32]])
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
