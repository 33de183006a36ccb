//! Serf's byte formats: tags as SWIM metadata, the push-pull state (clocks and recent
//! events), and the messages and key requests carried inside queries and responses. Every
//! decoder takes untrusted bytes and returns `None` on anything malformed.

use std::collections::{BTreeMap, VecDeque};

use ringleader_wire::msg::serf as wire;
use ringleader_wire::{Decoder, Encoder, Message};

/// Encodes tags as SWIM metadata: `klen(1) k vlen(2 LE) v` per tag, sorted by key.
pub fn encode_tags(tags: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in tags {
        let k = &k.as_bytes()[..k.len().min(255)];
        let v = &v.as_bytes()[..v.len().min(u16::MAX as usize)];
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes tags from SWIM metadata; `None` if malformed (untrusted input).
pub fn decode_tags(mut meta: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    while let Some((&klen, rest)) = meta.split_first() {
        let k = rest.get(..klen as usize)?;
        let rest = &rest[klen as usize..];
        let vlen = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let v = rest.get(2..2 + vlen)?;
        tags.insert(
            std::str::from_utf8(k).ok()?.to_owned(),
            std::str::from_utf8(v).ok()?.to_owned(),
        );
        meta = &rest[2 + vlen..];
    }
    Some(tags)
}

/// Push-pull state: version 2, the three clocks, then the most recent user events (Serf
/// carries them too, so a member that missed an event in gossip catches up at the next
/// push-pull): `count(1)` and per event `ltime(8) coalesce(1) name_len(2) name
/// payload_len(2) payload`, little-endian.
pub(crate) fn encode_state(
    (m, e, q): (u64, u64, u64),
    recent: &VecDeque<wire::UserEvent>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(26 + recent.len() * 64);
    v.push(2u8);
    v.extend_from_slice(&m.to_le_bytes());
    v.extend_from_slice(&e.to_le_bytes());
    v.extend_from_slice(&q.to_le_bytes());
    let n = recent.len().min(u8::MAX as usize);
    v.push(n as u8);
    for ev in recent.iter().take(n) {
        v.extend_from_slice(&ev.ltime.to_le_bytes());
        v.push(u8::from(ev.coalesce));
        v.extend_from_slice(&(ev.name.len() as u16).to_le_bytes());
        v.extend_from_slice(ev.name.as_bytes());
        v.extend_from_slice(&(ev.payload.len() as u16).to_le_bytes());
        v.extend_from_slice(&ev.payload);
    }
    v
}

/// Decodes push-pull state from a peer (untrusted): `None` if malformed or if an event is
/// larger than `event_bytes_max`.
pub(crate) fn decode_state(
    b: &[u8],
    event_bytes_max: usize,
) -> Option<((u64, u64, u64), Vec<wire::UserEvent>)> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    if take(&mut at, 1)? != [2] {
        return None;
    }
    let word = |at: &mut usize| -> Option<u64> {
        let mut w = [0u8; 8];
        w.copy_from_slice(take(at, 8)?);
        Some(u64::from_le_bytes(w))
    };
    let clocks = (word(&mut at)?, word(&mut at)?, word(&mut at)?);
    let count = take(&mut at, 1)?[0] as usize;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let mut w = [0u8; 8];
        w.copy_from_slice(take(&mut at, 8)?);
        let ltime = u64::from_le_bytes(w);
        let coalesce = take(&mut at, 1)?[0] != 0;
        let nl = take(&mut at, 2)?;
        let nl = u16::from_le_bytes([nl[0], nl[1]]) as usize;
        let name = std::str::from_utf8(take(&mut at, nl)?).ok()?.to_owned();
        let pl = take(&mut at, 2)?;
        let pl = u16::from_le_bytes([pl[0], pl[1]]) as usize;
        let payload = take(&mut at, pl)?.to_vec();
        if name.len() + payload.len() > event_bytes_max {
            return None;
        }
        events.push(wire::UserEvent {
            ltime,
            name,
            payload,
            coalesce,
        });
    }
    if at != b.len() {
        return None;
    }
    Some((clocks, events))
}

pub(crate) fn encode_msg(encoder: &mut Encoder, msg: &Message) -> Vec<u8> {
    encoder
        .encode_message(msg, None, 64 * 1024)
        .map(|f| f.to_vec())
        .unwrap_or_default()
}

pub(crate) fn decode_one(bytes: &[u8]) -> Option<Message> {
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    let frame = Decoder::new(b"", 64 * 1024).decode(&mut buf, None).ok()?;
    frame.messages().next()?.ok()?.to_owned().ok()
}

pub(crate) fn decode_key_request(bytes: &[u8]) -> Option<wire::KeyRequest> {
    match decode_one(bytes)? {
        Message::KeyRequest(r) => Some(r),
        _ => None,
    }
}

pub(crate) fn decode_key_response(bytes: &[u8]) -> Option<wire::KeyResponse> {
    match decode_one(bytes)? {
        Message::KeyResponse(r) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_malformed_meta_is_refused() {
        let mut t = BTreeMap::new();
        t.insert("role".to_owned(), "web".to_owned());
        t.insert("dc".to_owned(), "eu-1".to_owned());
        assert_eq!(decode_tags(&encode_tags(&t)), Some(t));
        assert_eq!(decode_tags(&[5, b'a']), None);
        assert_eq!(decode_tags(&[1, b'a', 9, 0]), None);
        assert_eq!(decode_tags(&[]), Some(BTreeMap::new()));
    }

    #[test]
    fn state_encoding_round_trips_and_refuses_garbage() {
        let mut recent = VecDeque::new();
        recent.push_back(wire::UserEvent {
            ltime: 9,
            name: "deploy".into(),
            payload: vec![1, 2],
            coalesce: true,
        });
        let state = encode_state((1, 2, 3), &recent);
        let (clocks, events) = decode_state(&state, 512).expect("decodes");
        assert_eq!(clocks, (1, 2, 3));
        assert_eq!(events, recent.iter().cloned().collect::<Vec<_>>());
        // Over the event bound, truncated anywhere, or with trailing bytes: refused.
        assert_eq!(decode_state(&state, 4), None);
        for cut in 0..state.len() {
            assert_eq!(decode_state(&state[..cut], 512), None, "cut at {cut}");
        }
        let mut long = state.clone();
        long.push(0);
        assert_eq!(decode_state(&long, 512), None);
        assert_eq!(decode_state(&[1; 25], 512), None);
    }
}
