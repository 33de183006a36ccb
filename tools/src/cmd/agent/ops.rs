//! The agent's state and every call it makes into the engine: the one place that knows
//! the [`Node`] API. The HTTP layer ([`super::api`]) only parses requests and renders what
//! these functions return.
//!
//! A join after start waits for the engine's `Joined` event of each seed (fed from the
//! event pump) up to [`JOIN_WAIT`], and says which seeds answered. Incoming queries named in `--respond` are answered from the event thread.
//!
//! What it must never do: hold the node lock across anything but one engine call, or let a
//! slow monitor subscriber hold back the event pump (the hub drops a slow subscriber's
//! oldest lines and tells it how many).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringleader_engine::Node;
use ringleader_engine::host::{Event, HostError, MemberInfo, QueryParams, QueryReply};
use ringleader_engine::swim::MemberState;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::{MONITOR_BACKLOG_LINES_MAX, MONITORS_MAX};

/// How long a join after start waits for each seed's answer (a push-pull exchange; the
/// engine bounds it by its stream timeout, well below this).
pub const JOIN_WAIT: Duration = Duration::from_secs(30);

/// Most joins after start waiting at once (each holds one API worker while it waits).
pub const JOINS_WAITING_MAX: usize = 64;

/// Longest query deadline a client may ask for, in milliseconds.
pub const QUERY_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;

/// How often the event pump looks whether the node is gone while no event comes.
const PUMP_POLL: Duration = Duration::from_millis(100);

/// Why an API call failed; each maps to one HTTP status (see [`ApiError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: the message names the field and what is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The agent has left the cluster (or is leaving) and serves nothing more (503).
    #[error("the agent has left the cluster: start it again with `ringleader-tools agent`")]
    Left,
    /// A bound of the agent is reached; the message names it (503).
    #[error("{0}")]
    Busy(String),
    /// The engine refused or failed (500).
    #[error("{0}")]
    Engine(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Left | ApiError::Busy(_) => 503,
            ApiError::Engine(_) => 500,
        }
    }

    /// A stable name for scripts: `bad_request`, `left`, `busy` or
    /// `engine`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Left => "left",
            ApiError::Busy(_) => "busy",
            ApiError::Engine(_) => "engine",
        }
    }
}

/// A member as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Its gossip address.
    pub addr: String,
    /// `alive`, `suspect`, `failed` or `left` (Serf's words).
    pub status: &'static str,
    /// Its tags (empty when its metadata is not a tag set).
    pub tags: BTreeMap<String, String>,
    /// Its incarnation as seen here.
    pub incarnation: u64,
    /// Its Vivaldi coordinate where known (`null` before a probe carried one).
    pub coordinate: Option<serde_json::Value>,
}

/// Every status, in the order metrics list them.
pub const STATUSES: [&str; 4] = ["alive", "suspect", "failed", "left"];

impl MemberView {
    fn of(m: &MemberInfo) -> MemberView {
        MemberView {
            name: m.name.clone(),
            addr: m.addr.to_string(),
            status: m.status.name(),
            tags: if m.tags.is_empty() {
                ringleader_engine::serf::decode_tags(&m.meta).unwrap_or_default()
            } else {
                m.tags.clone()
            },
            incarnation: m.incarnation,
            coordinate: m
                .coordinate
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok()),
        }
    }
}

/// Kinds of engine events the agent counts, in the order of [`AgentCounters::events`].
pub const EVENT_KINDS: [&str; 11] = [
    "member-join",
    "member-suspect",
    "member-alive",
    "member-failed",
    "member-leave",
    "member-update",
    "member-reap",
    "message",
    "join-done",
    "user",
    "query",
];

fn event_kind(e: &Event) -> usize {
    match e {
        Event::Up(_) => 0,
        Event::Suspect { .. } => 1,
        Event::AliveAgain(_) => 2,
        Event::Down { .. } => 3,
        Event::Left(_) => 4,
        Event::Updated(_) => 5,
        Event::Reaped(_) => 6,
        Event::Message { .. } => 7,
        Event::Joined { .. } => 8,
        Event::User { .. } => 9,
        Event::Query(_) => 10,
    }
}

/// What the agent itself counts (the engine's counters come from its census).
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Engine events taken, by kind (indexed like [`EVENT_KINDS`]).
    pub events: [AtomicU64; EVENT_KINDS.len()],
    /// Monitor lines a slow subscriber lost.
    pub monitor_lines_lost: AtomicU64,
    /// Incoming queries answered (`--respond`).
    pub queries_answered: AtomicU64,
    /// Answers the engine refused (too large, past the deadline, stopped).
    pub answers_failed: AtomicU64,
    /// API requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
}

/// A join after start waiting for one seed's answer.
struct JoinWaiter {
    /// Which join.
    id: u64,
    seed: SocketAddr,
    /// Gets `(seed, answered)` from the event pump.
    tell: crossbeam_channel::Sender<(SocketAddr, bool)>,
}

/// Everything the API handlers share.
pub struct AgentState {
    /// `None` once the node has left.
    node: RwLock<Option<Node>>,
    name: String,
    start: Instant,
    events: crossbeam_channel::Receiver<ringleader_engine::HostEvent>,
    hub: Mutex<Option<broadcast::Sender<Arc<str>>>>,
    leave_requested: watch::Sender<bool>,
    left: watch::Sender<bool>,
    leaving: AtomicBool,
    leave_error: Mutex<Option<String>>,
    /// Answers to incoming queries, by query name (`--respond`).
    responses: BTreeMap<String, String>,
    /// Joins after start waiting for a seed's `Joined` event: (seed, where to say if it
    /// answered).
    join_waiters: Mutex<Vec<JoinWaiter>>,
    /// The next join's id (tells one join's waiters from another's).
    next_join: AtomicU64,
    /// The agent's own counters.
    pub counters: AgentCounters,
}

impl AgentState {
    /// The state of an agent running `node`, started at `start`.
    pub fn new(node: Node, start: Instant, responses: BTreeMap<String, String>) -> AgentState {
        let (hub, _) = broadcast::channel(MONITOR_BACKLOG_LINES_MAX);
        AgentState {
            name: node.name().to_string(),
            events: node.events().clone(),
            node: RwLock::new(Some(node)),
            start,
            hub: Mutex::new(Some(hub)),
            leave_requested: watch::Sender::new(false),
            left: watch::Sender::new(false),
            leaving: AtomicBool::new(false),
            leave_error: Mutex::new(None),
            responses,
            join_waiters: Mutex::new(Vec::new()),
            next_join: AtomicU64::new(0),
            counters: AgentCounters::default(),
        }
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Milliseconds since the agent started.
    pub fn t_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Runs `f` on the node, or fails with [`ApiError::Left`] once it has left.
    fn with_node<T>(&self, f: impl FnOnce(&Node) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let guard = self.node.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(n) if !self.leaving.load(Ordering::SeqCst) => f(n),
            _ => Err(ApiError::Left),
        }
    }

    /// Every member the node knows, itself included, sorted by name.
    pub fn members(&self) -> Result<Vec<MemberView>, ApiError> {
        let mut v: Vec<MemberView> = self.with_node(|n| {
            n.members()
                .map(|ms| ms.iter().map(MemberView::of).collect())
                .map_err(engine)
        })?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// The members (raw) and the census, for `/metrics`.
    pub fn census(
        &self,
    ) -> Result<(Vec<MemberInfo>, ringleader_engine::host::Census, usize), ApiError> {
        self.with_node(|n| {
            let ms = n.members().map_err(engine)?;
            let alive = ms.iter().filter(|m| m.state == MemberState::Alive).count();
            let c = n.census(alive).map_err(engine)?;
            Ok((ms, c, n.events().len()))
        })
    }

    /// Joins through `addrs` (members of another cluster, or of this one after a
    /// partition): a push-pull with each, in the background; waits up to [`JOIN_WAIT`] for
    /// every seed's answer. `{"joined": n, "failed": [seeds that did not answer]}`; none
    /// answering is an error (500), as with Serf's `join`.
    pub fn join(&self, addrs: &[SocketAddr]) -> Result<serde_json::Value, ApiError> {
        if addrs.is_empty() {
            return Err(ApiError::BadRequest(
                "addrs: give at least one address".into(),
            ));
        }
        let mut seeds = addrs.to_vec();
        seeds.sort_unstable();
        seeds.dedup();
        let id = self.next_join.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        {
            let mut w = self.join_waiters.lock().unwrap_or_else(|p| p.into_inner());
            if w.len() + seeds.len() > JOINS_WAITING_MAX {
                return Err(ApiError::Busy(format!(
                    "{} join seeds are being waited for (at most {JOINS_WAITING_MAX}): \
                     try again when they have answered",
                    w.len()
                )));
            }
            w.extend(seeds.iter().map(|&a| JoinWaiter {
                id,
                seed: a,
                tell: tx.clone(),
            }));
        }
        drop(tx);
        let started = self.with_node(|n| n.join(seeds.clone()).map_err(engine));
        let mut outcome: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        if started.is_ok() {
            let deadline = Instant::now() + JOIN_WAIT;
            while outcome.len() < seeds.len() {
                let Ok((seed, ok)) = rx.recv_deadline(deadline) else {
                    break;
                };
                outcome.insert(seed, ok);
            }
        }
        self.join_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.id != id);
        started?;
        let joined = outcome.values().filter(|&&ok| ok).count();
        let failed: Vec<String> = seeds
            .iter()
            .filter(|a| outcome.get(a) != Some(&true))
            .map(ToString::to_string)
            .collect();
        if joined == 0 {
            return Err(ApiError::Engine(format!(
                "join: no seed answered ({}): check that a member listens there and \
                 shares this agent's key and label",
                failed.join(", ")
            )));
        }
        Ok(json!({ "joined": joined, "failed": failed }))
    }

    /// Marks the failed member `name` left cluster-wide.
    pub fn force_leave(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        if name.is_empty() {
            return Err(ApiError::BadRequest("name: give the member's name".into()));
        }
        self.with_node(|n| {
            n.force_leave(name)
                .map(|()| json!({ "force_left": name }))
                .map_err(engine)
        })
    }

    /// Sends a user event.
    pub fn user_event(
        &self,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<serde_json::Value, ApiError> {
        if name.is_empty() {
            return Err(ApiError::BadRequest("name: give the event's name".into()));
        }
        self.with_node(|n| {
            n.user_event(name, payload.to_vec(), coalesce)
                .map(|ltime| json!({ "name": name, "ltime": ltime }))
                .map_err(engine)
        })
    }

    /// Starts a query; its NDJSON lines (acks, responses, then `done`) come from the
    /// returned iterator, which blocks between them and ends after `done`.
    pub fn query(&self, plan: QueryPlan) -> Result<QueryLines, ApiError> {
        self.with_node(move |n| {
            let params = QueryParams {
                filter_nodes: plan.filter_nodes,
                filter_tags: plan.filter_tags,
                timeout: plan.timeout,
                request_ack: plan.request_ack,
                relay_factor: plan.relay_factor,
            };
            let stream = n.query(&plan.name, plan.payload, params).map_err(engine)?;
            let lines = stream.map(|r| match r {
                QueryReply::Ack { from } => json!({"type": "ack", "from": from}),
                QueryReply::Response { from, payload } => json!({
                    "type": "response",
                    "from": from,
                    "payload": String::from_utf8_lossy(&payload),
                }),
                QueryReply::Done { responses, acks } => {
                    json!({"type": "done", "responses": responses, "acks": acks})
                }
            });
            Ok(Box::new(lines) as QueryLines)
        })
    }

    /// Runs a key operation (`install`, `use`, `remove`; `list` with no key) cluster-wide.
    pub fn keys(&self, op: KeyOp, key: Option<[u8; 32]>) -> Result<serde_json::Value, ApiError> {
        self.with_node(|n| {
            let need_key = || key.ok_or_else(|| ApiError::BadRequest("key: give the key".into()));
            let report = match op {
                KeyOp::Install => n.install_key(need_key()?),
                KeyOp::Use => n.use_key(need_key()?),
                KeyOp::Remove => n.remove_key(need_key()?),
                KeyOp::List => n.list_keys(),
            }
            .map_err(engine)?;
            let failed: Vec<serde_json::Value> = report
                .failed
                .iter()
                .map(|(name, error)| json!({"name": name, "error": error}))
                .collect();
            Ok(json!({
                "op": report.op,
                "members": report.members,
                "responses": report.responses,
                "ok": report.ok,
                "failed": failed,
                "no_response": report.no_response,
                "keys": report.keys,
            }))
        })
    }

    /// The estimated round-trip time between members `a` and `b`.
    pub fn rtt(&self, a: &str, b: &str) -> Result<serde_json::Value, ApiError> {
        if a.is_empty() || b.is_empty() {
            return Err(ApiError::BadRequest("a, b: give two member names".into()));
        }
        self.with_node(|n| match n.rtt(a, b).map_err(engine)? {
            Some(d) => Ok(json!({"a": a, "b": b, "rtt_ms": d.as_secs_f64() * 1000.0})),
            None => Err(ApiError::Engine(format!(
                "no coordinate known yet for {a} or {b}: members learn them from probe acks; \
                 try again in a few probe intervals"
            ))),
        })
    }

    /// Asks the agent to leave and stop (what `POST /v1/leave` does after leaving).
    pub fn request_leave(&self) {
        self.leave_requested.send_replace(true);
    }

    /// Whether a leave was asked for through the API.
    pub fn leave_requested(&self) -> bool {
        *self.leave_requested.borrow()
    }

    /// Resolves once a leave is asked for through the API.
    pub async fn leave_notified(&self) {
        let mut rx = self.leave_requested.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Resolves once the node has left.
    pub async fn left_notified(&self) {
        let mut rx = self.left.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Leaves gracefully and stops the node (blocking); `Ok` if it had left already.
    pub fn leave(&self, reason: &str) -> Result<(), ApiError> {
        // New calls see `Left` from here on; calls in flight finish first (write lock).
        self.leaving.store(true, Ordering::SeqCst);
        let node = self.node.write().unwrap_or_else(|p| p.into_inner()).take();
        let Some(node) = node else {
            return Ok(());
        };
        self.publish(
            json!({"event": "leaving", "reason": reason, "t_ms": self.t_ms(Instant::now())}),
        );
        tracing::info!(agent = %self.name, %reason, "leaving");
        let r = node.leave().map_err(engine);
        if let Err(e) = &r {
            *self.leave_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        self.left.send_replace(true);
        r
    }

    /// Why the leave failed, if it did (whoever asked for it).
    pub fn leave_error(&self) -> Option<String> {
        self.leave_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new monitor subscription; refused once the agent is stopping or when
    /// [`MONITORS_MAX`] are open.
    pub fn subscribe(&self) -> Result<broadcast::Receiver<Arc<str>>, ApiError> {
        let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let hub = hub.as_ref().ok_or(ApiError::Left)?;
        if hub.receiver_count() >= MONITORS_MAX {
            return Err(ApiError::Busy(format!(
                "{MONITORS_MAX} monitors are open already (MONITORS_MAX): close one"
            )));
        }
        Ok(hub.subscribe())
    }

    /// Monitor subscribers now.
    pub fn subscribers(&self) -> usize {
        let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        hub.as_ref().map_or(0, broadcast::Sender::receiver_count)
    }

    /// Ends every monitor stream (after the lines already sent).
    pub fn close_monitors(&self) {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Sends one line to every monitor subscriber (none: dropped, nobody listens).
    fn publish(&self, v: serde_json::Value) {
        let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hub.as_ref() {
            let _ = h.send(Arc::from(v.to_string()));
        }
    }

    /// Takes one engine event: counts it, logs it, and sends it to the monitors.
    fn take_event(&self, e: &ringleader_engine::HostEvent) {
        self.counters.events[event_kind(&e.event)].fetch_add(1, Ordering::Relaxed);
        let v = event_json(&e.event, self.t_ms(e.at));
        match &e.event {
            Event::Message { .. } => tracing::debug!(agent = %self.name, event = %v, "event"),
            Event::Joined { seed, ok: false } => {
                tracing::warn!(agent = %self.name, %seed, "join failed: the seed did not answer");
            }
            _ => tracing::info!(agent = %self.name, event = %v, "event"),
        }
        if let Event::Joined { seed, ok } = &e.event {
            let mut w = self.join_waiters.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|j| {
                if j.seed != *seed {
                    return true;
                }
                let _ = j.tell.send((*seed, *ok));
                false
            });
        }
        self.publish(v);
        if let Event::Query(q) = &e.event
            && let Some(answer) = self.responses.get(&q.name)
        {
            match q.respond(answer.as_bytes().to_vec()) {
                Ok(()) => self
                    .counters
                    .queries_answered
                    .fetch_add(1, Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(agent = %self.name, query = %q.name, "answer refused: {err}");
                    self.counters.answers_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// One engine event as a monitor line.
pub fn event_json(e: &Event, t_ms: u64) -> serde_json::Value {
    let kind = EVENT_KINDS[event_kind(e)];
    let mut v = match e {
        Event::Message {
            from,
            origin,
            payload,
        } => json!({
            "origin": origin,
            "from": from.to_string(),
            "payload": String::from_utf8_lossy(payload),
        }),
        Event::Joined { seed, ok } => json!({"seed": seed.to_string(), "ok": ok}),
        Event::User {
            ltime,
            name,
            payload,
        } => json!({
            "name": name,
            "payload": String::from_utf8_lossy(payload),
            "ltime": ltime,
        }),
        Event::Query(q) => json!({
            "name": q.name,
            "payload": String::from_utf8_lossy(&q.payload),
            "ltime": q.ltime,
            "id": q.id,
            "source": q.source,
        }),
        _ => match e.member() {
            Some(m) => serde_json::to_value(MemberView::of(m)).unwrap_or_default(),
            None => json!({}),
        },
    };
    if let Event::Suspect { by, .. } | Event::Down { by, .. } = e {
        v["by"] = json!(by);
    }
    v["event"] = json!(kind);
    v["t_ms"] = json!(t_ms);
    v
}

fn engine(e: HostError) -> ApiError {
    ApiError::Engine(e.to_string())
}

/// Starts the thread that takes the node's events until the node is gone.
pub fn start_pump(state: &Arc<AgentState>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let s = Arc::clone(state);
    std::thread::Builder::new()
        .name("agent-events".into())
        .spawn(move || {
            loop {
                match s.events.recv_timeout(PUMP_POLL) {
                    Ok(e) => s.take_event(&e),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if *s.left.borrow() {
                            break;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .context("cannot start the event thread")
}

/// A query's lines as they come (the iterator blocks until the next).
pub type QueryLines = Box<dyn Iterator<Item = serde_json::Value> + Send>;

/// A key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    /// Add a key to every member's keyring.
    Install,
    /// Make a key the one that seals, everywhere.
    Use,
    /// Remove a key everywhere.
    Remove,
    /// Which keys each member holds.
    List,
}

/// `POST /v1/query`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The query's name.
    pub name: String,
    /// Its payload (UTF-8).
    #[serde(default)]
    pub payload: String,
    /// Only members whose tag matches (the value is a regular expression, as Serf's).
    #[serde(default)]
    pub filter_tags: BTreeMap<String, String>,
    /// Only these members.
    #[serde(default)]
    pub filter_nodes: Vec<String>,
    /// How long to wait for responses (default: Serf's formula).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Ask each matching member for an ack as it receives the query (default: yes).
    #[serde(default = "yes")]
    pub request_ack: bool,
    /// Members that relay each answer besides the direct send (default: the config's).
    #[serde(default)]
    pub relay_factor: Option<u8>,
}

/// Serde's default for flags that are on unless turned off.
pub(super) fn yes() -> bool {
    true
}

/// A checked query in the engine's terms (its `QueryParams`).
#[derive(Debug)]
pub struct QueryPlan {
    /// The query's name.
    pub name: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Only these members answer (empty: no filter).
    pub filter_nodes: Vec<String>,
    /// Only members whose tag (first) matches the regular expression (second) answer.
    pub filter_tags: Vec<(String, String)>,
    /// When to stop listening (`None`: Serf's formula).
    pub timeout: Option<Duration>,
    /// Ask each matching member for an ack.
    pub request_ack: bool,
    /// Members that relay each answer besides the direct send (`None`: the config's).
    pub relay_factor: Option<u8>,
}

impl QueryRequest {
    /// The query checked, or 400 naming the field that is wrong.
    pub fn plan(self) -> Result<QueryPlan, ApiError> {
        if self.name.is_empty() {
            return Err(ApiError::BadRequest("name: give the query's name".into()));
        }
        if self.filter_tags.keys().any(String::is_empty) {
            return Err(ApiError::BadRequest(
                "filter_tags: a tag name is empty".into(),
            ));
        }
        if self.filter_nodes.iter().any(String::is_empty) {
            return Err(ApiError::BadRequest("filter_nodes: a name is empty".into()));
        }
        if let Some(t) = self.timeout_ms
            && !(1..=QUERY_TIMEOUT_MS_MAX).contains(&t)
        {
            return Err(ApiError::BadRequest(format!(
                "timeout_ms: {t} is not in 1..={QUERY_TIMEOUT_MS_MAX}"
            )));
        }
        Ok(QueryPlan {
            name: self.name,
            payload: self.payload.into_bytes(),
            filter_nodes: self.filter_nodes,
            filter_tags: self.filter_tags.into_iter().collect(),
            timeout: self.timeout_ms.map(Duration::from_millis),
            request_ack: self.request_ack,
            relay_factor: self.relay_factor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: MemberState) -> MemberInfo {
        let mut tags = BTreeMap::new();
        tags.insert("role".to_string(), "web".to_string());
        MemberInfo {
            name: "n2".into(),
            addr: "127.0.0.2:7946".parse().unwrap(),
            meta: ringleader_engine::serf::encode_tags(&tags),
            state,
            incarnation: 3,
            tags: BTreeMap::new(),
            status: ringleader_engine::host::MemberStatus::from_state(state),
            coordinate: None,
        }
    }

    #[test]
    fn events_become_monitor_lines_with_serf_names() {
        let v = event_json(
            &Event::Down {
                member: member(MemberState::Dead),
                by: "n1".into(),
            },
            42,
        );
        assert_eq!(v["event"], "member-failed");
        assert_eq!(v["name"], "n2");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["by"], "n1");
        assert_eq!(v["tags"]["role"], "web");
        assert_eq!(v["t_ms"], 42);
        let v = event_json(
            &Event::Joined {
                seed: "127.0.0.1:1".parse().unwrap(),
                ok: false,
            },
            0,
        );
        assert_eq!(v["event"], "join-done");
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn metadata_that_is_not_tags_shows_no_tags() {
        let mut m = member(MemberState::Alive);
        m.meta = vec![200, b'x'];
        assert!(MemberView::of(&m).tags.is_empty());
    }

    #[test]
    fn queries_are_checked_field_by_field() {
        let q = |v: serde_json::Value| -> Result<QueryPlan, ApiError> {
            serde_json::from_value::<QueryRequest>(v)
                .expect("shape")
                .plan()
        };
        let p = q(json!({"name": "ping", "filter_tags": {"role": "^web$"}, "timeout_ms": 900}))
            .expect("valid");
        assert!(format!("{p:?}").contains("request_ack: true"), "{p:?}");
        let e = q(json!({"name": ""})).expect_err("no name");
        assert!(e.to_string().starts_with("name:"), "{e}");
        let e = q(json!({"name": "x", "timeout_ms": 0})).expect_err("zero timeout");
        assert!(e.to_string().starts_with("timeout_ms:"), "{e}");
        let e = q(json!({"name": "x", "filter_nodes": [""]})).expect_err("empty node");
        assert!(e.to_string().starts_with("filter_nodes:"), "{e}");
        assert!(serde_json::from_value::<QueryRequest>(json!({"name": "x", "tags": {}})).is_err());
    }

    #[test]
    fn errors_map_to_their_status() {
        assert_eq!(ApiError::Engine("x".into()).status(), 500);
        assert_eq!(ApiError::Busy("x".into()).status(), 503);
        assert_eq!(ApiError::Left.status(), 503);
        assert_eq!(ApiError::BadRequest("x".into()).status(), 400);
    }
}
