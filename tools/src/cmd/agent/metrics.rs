//! `/metrics`: the node's counters in the Prometheus text exposition format (version
//! 0.0.4), rendered from one census of the engine and the agent's own counters.
//!
//! Naming follows Prometheus: every name starts `ringleader_`, counters end `_total`,
//! causes, states and kinds are labels (one series per value, zeros included, so a rate
//! never starts from a missing series), units are in the name (`_bytes_`). Every family
//! has `# HELP` and `# TYPE`. Gauges are values at the time of the scrape.
//!
//! What it must never do: emit a name or a label value that is not in the format's
//! character set (names are constants here; label values come from fixed lists, and the
//! one free-form value, the agent's name, is escaped).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use ringleader_engine::host::{Census, MemberInfo};
use ringleader_engine::transport::DROP_CAUSES;

use super::ops::{AgentCounters, EVENT_KINDS, STATUSES};

/// Writes one metric family: HELP, TYPE and its samples, each `(labels, value)` with the
/// labels already in `{k="v"}` form or empty.
fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(out: &mut String, name: &str, help: &str, kind: &str, v: u64) {
    family(out, name, help, kind, &[(String::new(), v)]);
}

/// A label value escaped as the format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// What one scrape shows.
pub struct Scrape<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Its census.
    pub census: &'a Census,
    /// The members it knows (itself included).
    pub members: &'a [MemberInfo],
    /// Events waiting in the engine's channel for the agent.
    pub events_queued: usize,
    /// Monitor streams open.
    pub monitors: usize,
    /// The agent's own counters.
    pub agent: &'a AgentCounters,
}

/// The whole `/metrics` body.
pub fn render(s: &Scrape<'_>) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let udp = s.census.udp();
    let stats = s.census.stats();
    let c = |name: &str, help: &str, v: u64, o: &mut String| one(o, name, help, "counter", v);
    let g = |name: &str, help: &str, v: u64, o: &mut String| one(o, name, help, "gauge", v);

    family(
        &mut o,
        "ringleader_agent_info",
        "The agent: its member name and the tools' version (always 1).",
        "gauge",
        &[(
            format!(
                "{{name=\"{}\",version=\"{}\"}}",
                escape(s.name),
                env!("CARGO_PKG_VERSION")
            ),
            1,
        )],
    );

    // Transport (the UDP ring).
    c(
        "ringleader_udp_datagrams_received_total",
        "Datagrams received from the kernel, good and bad.",
        udp.datagrams_received,
        &mut o,
    );
    c(
        "ringleader_udp_received_bytes_total",
        "Payload bytes received.",
        udp.bytes_received,
        &mut o,
    );
    c(
        "ringleader_udp_datagrams_delivered_total",
        "Datagrams that decoded, validated and were handed to the member.",
        udp.datagrams_delivered,
        &mut o,
    );
    c(
        "ringleader_udp_datagrams_sent_total",
        "Datagrams the kernel sent.",
        udp.datagrams_sent,
        &mut o,
    );
    c(
        "ringleader_udp_sent_bytes_total",
        "Payload bytes the kernel accepted.",
        udp.bytes_sent,
        &mut o,
    );
    let drops: Vec<(String, u64)> = DROP_CAUSES
        .iter()
        .zip(udp.dropped.iter())
        .map(|(cause, v)| (format!("{{cause=\"{cause}\"}}"), *v))
        .collect();
    family(
        &mut o,
        "ringleader_udp_datagrams_dropped_total",
        "Received datagrams dropped, by cause.",
        "counter",
        &drops,
    );
    c(
        "ringleader_udp_send_errors_total",
        "Datagrams the kernel failed to send.",
        udp.send_errors,
        &mut o,
    );
    c(
        "ringleader_udp_send_queue_full_total",
        "Sends refused because every send slot was in flight.",
        udp.send_queue_full,
        &mut o,
    );
    c(
        "ringleader_udp_recv_no_buffers_total",
        "Times the kernel found the receive buffer ring empty.",
        udp.recv_no_buffers,
        &mut o,
    );
    let sends_dropped = s.census.shards.iter().map(|x| x.sends_dropped).sum();
    c(
        "ringleader_sends_dropped_total",
        "Datagrams the shard could not send (no send slot, encoding failed).",
        sends_dropped,
        &mut o,
    );

    // Streams (TCP push-pull and fallback probes).
    let (out, failed, served, refused) = s.census.streams();
    let sum = |f: fn(&ringleader_engine::host::ShardCensus) -> u64| -> u64 {
        s.census.shards.iter().map(f).sum()
    };
    c(
        "ringleader_streams_out_total",
        "Stream exchanges started (push-pull, fallback probes).",
        out,
        &mut o,
    );
    c(
        "ringleader_streams_failed_total",
        "Outbound stream exchanges that failed (unreachable, timeout, bad answer).",
        failed,
        &mut o,
    );
    c(
        "ringleader_streams_served_total",
        "Inbound stream exchanges served.",
        served,
        &mut o,
    );
    let causes = [
        ("busy", sum(|x| x.streams_refused_busy)),
        ("per_ip", sum(|x| x.streams_refused_per_ip)),
        ("timed_out", sum(|x| x.streams_timed_out)),
        ("over_budget", sum(|x| x.streams_over_budget)),
        ("bad_frame", sum(|x| x.streams_bad_frame)),
    ];
    let named: u64 = causes.iter().map(|(_, v)| v).sum();
    let mut refused_by: Vec<(String, u64)> = causes
        .iter()
        .map(|(k, v)| (format!("{{cause=\"{k}\"}}"), *v))
        .collect();
    refused_by.push((
        "{cause=\"other\"}".to_string(),
        refused.saturating_sub(named),
    ));
    family(
        &mut o,
        "ringleader_streams_refused_total",
        "Inbound streams closed unanswered, by cause.",
        "counter",
        &refused_by,
    );
    c(
        "ringleader_streams_unrouted_total",
        "Inbound connections to an address no hosted member holds.",
        sum(|x| x.streams_unrouted),
        &mut o,
    );
    c(
        "ringleader_accept_errors_total",
        "Failed accepts of stream connections.",
        sum(|x| x.accept_errors),
        &mut o,
    );

    // The SWIM protocol.
    c(
        "ringleader_swim_datagrams_out_total",
        "Datagrams the protocol produced.",
        stats.datagrams_out,
        &mut o,
    );
    c(
        "ringleader_swim_datagram_out_bytes_total",
        "Bytes of the datagrams the protocol produced.",
        stats.datagram_bytes_out,
        &mut o,
    );
    c(
        "ringleader_swim_messages_out_total",
        "Messages in those datagrams (piggybacked gossip included).",
        stats.items_out,
        &mut o,
    );
    c(
        "ringleader_swim_probes_total",
        "Probes started.",
        stats.probes,
        &mut o,
    );
    c(
        "ringleader_swim_probes_failed_total",
        "Probes with no ack by their deadline.",
        stats.probes_failed,
        &mut o,
    );
    c(
        "ringleader_swim_refutations_total",
        "Suspicions about this member that it refuted.",
        stats.refutations,
        &mut o,
    );
    c(
        "ringleader_swim_messages_dropped_total",
        "Protocol messages dropped for a bound (relays, suspicions, streams, directory).",
        stats.dropped,
        &mut o,
    );
    c(
        "ringleader_swim_push_pull_refused_total",
        "Push-pull states refused (over a bound).",
        stats.push_pull_refused,
        &mut o,
    );
    c(
        "ringleader_swim_reconnects_total",
        "Reconnect attempts to failed members.",
        stats.reconnects,
        &mut o,
    );
    family(
        &mut o,
        "ringleader_swim_rumors_total",
        "Alive rumors received: news, already known, or known and counted against one being spread.",
        "counter",
        &[
            ("{kind=\"new\"}".into(), stats.rumors_new),
            ("{kind=\"redundant\"}".into(), stats.rumors_redundant),
            ("{kind=\"damped\"}".into(), stats.rumors_damped),
        ],
    );
    let suspicions = s.agent.events[1].load(Ordering::Relaxed);
    c(
        "ringleader_suspicions_total",
        "Suspicions of members this node has seen raised.",
        suspicions,
        &mut o,
    );

    // The Serf layer.
    let serf = |f: fn(&ringleader_engine::host::SerfCounters) -> u64| -> u64 {
        s.census.shards.iter().map(|x| f(&x.serf)).sum()
    };
    family(
        &mut o,
        "ringleader_serf_user_events_total",
        "User events received: delivered once, seen again and dropped, or refused as too old.",
        "counter",
        &[
            (
                "{result=\"delivered\"}".into(),
                serf(|c| c.events_delivered),
            ),
            (
                "{result=\"duplicate\"}".into(),
                serf(|c| c.events_duplicate),
            ),
            ("{result=\"too_old\"}".into(), serf(|c| c.events_too_old)),
        ],
    );
    family(
        &mut o,
        "ringleader_serf_queries_total",
        "Queries received: delivered (or handled internally), or seen again and dropped.",
        "counter",
        &[
            (
                "{result=\"delivered\"}".into(),
                serf(|c| c.queries_delivered),
            ),
            (
                "{result=\"duplicate\"}".into(),
                serf(|c| c.queries_duplicate),
            ),
        ],
    );
    c(
        "ringleader_serf_responses_sent_total",
        "Query responses sent (direct).",
        serf(|c| c.responses_sent),
        &mut o,
    );
    c(
        "ringleader_serf_responses_relayed_total",
        "Query responses relayed for other members.",
        serf(|c| c.relays),
        &mut o,
    );
    c(
        "ringleader_serf_messages_refused_total",
        "Serf messages refused (malformed, over a bound) or stale intents.",
        serf(|c| c.refused),
        &mut o,
    );
    c(
        "ringleader_serf_query_replies_dropped_total",
        "Query replies the application's stream had no room for.",
        serf(|c| c.query_replies_dropped),
        &mut o,
    );
    c(
        "ringleader_serf_snapshots_skipped_total",
        "Periodic snapshots skipped because the writer was behind.",
        serf(|c| c.snapshots_skipped),
        &mut o,
    );
    c(
        "ringleader_agent_queries_answered_total",
        "Incoming queries the agent answered (--respond).",
        s.agent.queries_answered.load(Ordering::Relaxed),
        &mut o,
    );
    c(
        "ringleader_agent_answers_failed_total",
        "Answers to queries the engine refused.",
        s.agent.answers_failed.load(Ordering::Relaxed),
        &mut o,
    );

    // Members and queues.
    let by_state: Vec<(String, u64)> = STATUSES
        .iter()
        .map(|st| {
            let n = s.members.iter().filter(|m| m.status.name() == *st).count();
            (format!("{{status=\"{st}\"}}"), n as u64)
        })
        .collect();
    family(
        &mut o,
        "ringleader_members",
        "Members this node knows, itself included, by status.",
        "gauge",
        &by_state,
    );
    g(
        "ringleader_events_queue_depth",
        "Engine events waiting for the agent.",
        s.events_queued as u64,
        &mut o,
    );
    let host_dropped = s.census.shards.iter().map(|x| x.events_dropped).sum();
    family(
        &mut o,
        "ringleader_events_dropped_total",
        "Events lost: the application channel was full (host), or the member's queue (member) or the Serf layer's (serf) was.",
        "counter",
        &[
            ("{where=\"host\"}".into(), host_dropped),
            ("{where=\"member\"}".into(), stats.events_dropped),
            ("{where=\"serf\"}".into(), serf(|c| c.events_dropped)),
        ],
    );
    let kinds: Vec<(String, u64)> = EVENT_KINDS
        .iter()
        .zip(s.agent.events.iter())
        .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.load(Ordering::Relaxed)))
        .collect();
    family(
        &mut o,
        "ringleader_agent_events_total",
        "Engine events the agent took, by kind.",
        "counter",
        &kinds,
    );
    g(
        "ringleader_agent_monitors",
        "Monitor streams open.",
        s.monitors as u64,
        &mut o,
    );
    c(
        "ringleader_agent_monitor_lines_lost_total",
        "Monitor lines a slow subscriber lost.",
        s.agent.monitor_lines_lost.load(Ordering::Relaxed),
        &mut o,
    );
    c(
        "ringleader_agent_unauthorized_total",
        "API requests refused for a missing or wrong token.",
        s.agent.unauthorized.load(Ordering::Relaxed),
        &mut o,
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let census = Census::default();
        let agent = AgentCounters::default();
        let text = render(&Scrape {
            name: "n\"1",
            census: &census,
            members: &[],
            events_queued: 0,
            monitors: 0,
            agent: &agent,
        });
        let mut kind = None;
        let mut families = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').expect("TYPE name kind");
                assert!(name.starts_with("ringleader_"), "{name}");
                if k == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                } else {
                    assert_eq!(k, "gauge", "{name}");
                    assert!(!name.ends_with("_total"), "{name}");
                }
                kind = Some(name.to_string());
                families += 1;
            } else if !line.starts_with('#') {
                let name = kind.as_deref().expect("a sample after its TYPE");
                assert!(line.starts_with(name), "{line} outside family {name}");
            }
        }
        assert!(families > 20, "{families} families");
        assert!(text.contains("name=\"n\\\"1\""), "escaped name:\n{text}");
        for cause in DROP_CAUSES {
            assert!(text.contains(&format!("cause=\"{cause}\"")), "{cause}");
        }
    }
}
