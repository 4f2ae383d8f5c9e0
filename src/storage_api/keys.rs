//! Typed keys of the storage API ↔ the byte keys of our tables (layouts in `partition::keys`).
//!
//! Every table's key is a sequence of components (u32, u64, length-prefixed bytes, a 24-byte invocation
//! id, or a raw tail). A key message maps to that sequence field by field, so one encoder and one
//! parser serve every table, and a prefix filter is simply "the leading components that are set".

use crate::partition::{partition_key, InvocationId, PartitionId};
use crate::proto::storage::{self as pb, key::Key as K};
use crate::storage::Table;

/// A filter that names no valid key of a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One component of a stored key; `None` when a filter leaves it unset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    U32(Option<u32>),
    U64(Option<u64>),
    /// Length-prefixed (u32 BE) bytes.
    Var(Option<Vec<u8>>),
    /// An invocation id: exactly [`InvocationId::LEN`] bytes.
    Id(Option<Vec<u8>>),
    /// The rest of the key, unprefixed (a prefix filter matches it byte-wise).
    Tail(Option<Vec<u8>>),
}

impl Part {
    fn is_set(&self) -> bool {
        match self {
            Part::U32(v) => v.is_some(),
            Part::U64(v) => v.is_some(),
            Part::Var(v) | Part::Id(v) | Part::Tail(v) => v.is_some(),
        }
    }

    fn encode(&self, name: &str, out: &mut Vec<u8>) -> Result<(), Invalid> {
        match self {
            Part::U32(Some(v)) => out.extend_from_slice(&v.to_be_bytes()),
            Part::U64(Some(v)) => out.extend_from_slice(&v.to_be_bytes()),
            Part::Var(Some(v)) => {
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            Part::Id(Some(v)) if v.len() != InvocationId::LEN => {
                return Err(Invalid(format!(
                    "{name} must be {} bytes, got {}",
                    InvocationId::LEN,
                    v.len()
                )))
            }
            Part::Id(Some(v)) | Part::Tail(Some(v)) => out.extend_from_slice(v),
            _ => {}
        }
        Ok(())
    }

    /// Reads a component of the same kind from the front of `rest`.
    fn parse(&self, rest: &mut &[u8]) -> Option<Part> {
        let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
            let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
            *rest = tail;
            Some(head.to_vec())
        };
        Some(match self {
            Part::U32(_) => Part::U32(Some(u32::from_be_bytes(take(rest, 4)?.try_into().ok()?))),
            Part::U64(_) => Part::U64(Some(u64::from_be_bytes(take(rest, 8)?.try_into().ok()?))),
            Part::Var(_) => {
                let len = u32::from_be_bytes(take(rest, 4)?.try_into().ok()?) as usize;
                Part::Var(Some(take(rest, len)?))
            }
            Part::Id(_) => Part::Id(Some(take(rest, InvocationId::LEN)?)),
            Part::Tail(_) => Part::Tail(Some(take(rest, rest.len())?)),
        })
    }

    fn u32(&self) -> Option<u32> {
        match self {
            Part::U32(v) => *v,
            _ => None,
        }
    }

    fn u64(&self) -> Option<u64> {
        match self {
            Part::U64(v) => *v,
            _ => None,
        }
    }

    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Part::Var(v) | Part::Id(v) | Part::Tail(v) => v.clone(),
            _ => None,
        }
    }

    fn string(&self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// The table a key message names and its components, in key order.
fn parts(key: &K) -> (Table, Vec<(&'static str, Part)>) {
    use Part::*;
    let var = |s: &Option<String>| Var(s.as_ref().map(|s| s.as_bytes().to_vec()));
    match key {
        K::Deduplication(k) => (
            Table::Dedup,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("producing_partition_id", U32(k.producing_partition_id)),
            ],
        ),
        K::PartitionStateMachine(k) => (
            Table::Fsm,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("state_id", Tail(k.state_id.clone())),
            ],
        ),
        K::Inbox(k) => (
            Table::Inbox,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("service_name", var(&k.service_name)),
                ("service_key", Var(k.service_key.clone())),
                ("sequence_number", U64(k.sequence_number)),
            ],
        ),
        K::Journal(k) => (
            Table::Journal,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("invocation_id", Id(k.invocation_id.clone())),
                ("journal_index", U32(k.journal_index)),
            ],
        ),
        K::Outbox(k) => (
            Table::Outbox,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("message_index", U64(k.message_index)),
            ],
        ),
        K::State(k) => (
            Table::State,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("service_name", var(&k.service_name)),
                ("service_key", Var(k.service_key.clone())),
                ("state_key", Tail(k.state_key.clone())),
            ],
        ),
        K::Status(k) => (
            Table::Status,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("invocation_id", Id(k.invocation_id.clone())),
            ],
        ),
        K::Timers(k) => (
            Table::Timers,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("timestamp", U64(k.timestamp)),
                ("invocation_id", Id(k.invocation_id.clone())),
                ("journal_index", U32(k.journal_index)),
            ],
        ),
        K::Idempotency(k) => (
            Table::Idempotency,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("invocation_id", Id(k.invocation_id.clone())),
            ],
        ),
        K::Completions(k) => (
            Table::Completions,
            vec![
                ("partition_id", U32(k.partition_id)),
                ("invocation_id", Id(k.invocation_id.clone())),
                ("journal_index", U32(k.journal_index)),
            ],
        ),
        K::System(k) => (Table::System, vec![("key", Tail(k.key.clone()))]),
    }
}

/// The key message of `table` with the components `p` (the inverse of [`parts`]).
fn from_parts(table: Table, p: &[Part]) -> K {
    let at = |i: usize| p.get(i).cloned().unwrap_or(Part::U32(None));
    match table {
        Table::Dedup => K::Deduplication(pb::Deduplication {
            partition_id: at(0).u32(),
            producing_partition_id: at(1).u32(),
        }),
        Table::Fsm => K::PartitionStateMachine(pb::PartitionStateMachine {
            partition_id: at(0).u32(),
            state_id: at(1).bytes(),
        }),
        Table::Inbox => K::Inbox(pb::Inbox {
            partition_id: at(0).u32(),
            service_name: at(1).string(),
            service_key: at(2).bytes(),
            sequence_number: at(3).u64(),
        }),
        Table::Journal => K::Journal(pb::Journal {
            partition_id: at(0).u32(),
            invocation_id: at(1).bytes(),
            journal_index: at(2).u32(),
        }),
        Table::Outbox => K::Outbox(pb::Outbox {
            partition_id: at(0).u32(),
            message_index: at(1).u64(),
        }),
        Table::State => K::State(pb::State {
            partition_id: at(0).u32(),
            service_name: at(1).string(),
            service_key: at(2).bytes(),
            state_key: at(3).bytes(),
        }),
        Table::Status => K::Status(pb::Status {
            partition_id: at(0).u32(),
            invocation_id: at(1).bytes(),
        }),
        Table::Timers => K::Timers(pb::Timers {
            partition_id: at(0).u32(),
            timestamp: at(1).u64(),
            invocation_id: at(2).bytes(),
            journal_index: at(3).u32(),
        }),
        Table::Idempotency => K::Idempotency(pb::Idempotency {
            partition_id: at(0).u32(),
            invocation_id: at(1).bytes(),
        }),
        Table::Completions => K::Completions(pb::Completions {
            partition_id: at(0).u32(),
            invocation_id: at(1).bytes(),
            journal_index: at(2).u32(),
        }),
        Table::System => K::System(pb::System { key: at(0).bytes() }),
    }
}

/// Fills in an unset partition from the fields it follows from: the service name and key (state,
/// inbox) or an invocation id.
fn derive_partition(table: Table, parts: &mut [(&'static str, Part)], partitions: u32) {
    if !matches!(parts.first(), Some((_, Part::U32(None)))) {
        return;
    }
    let derived = match (table, parts.get(1), parts.get(2)) {
        (
            Table::State | Table::Inbox,
            Some((_, Part::Var(Some(s)))),
            Some((_, Part::Var(Some(k)))),
        ) => {
            let service = String::from_utf8_lossy(s);
            Some((partition_key(&service, k) % u64::from(partitions)) as PartitionId)
        }
        _ => parts.iter().find_map(|(_, part)| match part {
            Part::Id(Some(id)) => InvocationId::from_slice(id).map(|id| id.partition(partitions)),
            _ => None,
        }),
    };
    if let Some(p) = derived {
        parts[0].1 = Part::U32(Some(p));
    }
}

/// The table named by `key` and the encoded key (or key prefix) it selects. `whole`: every component
/// must be set (a `key` filter); otherwise the set components must be leading ones (a prefix).
pub fn encode(key: &pb::Key, whole: bool, partitions: u32) -> Result<(Table, Vec<u8>), Invalid> {
    let key = key
        .key
        .as_ref()
        .ok_or_else(|| Invalid("the key names no table (set one of its fields)".into()))?;
    let (table, mut parts) = parts(key);
    for (name, part) in &parts {
        if let Part::Id(Some(_)) = part {
            part.encode(name, &mut Vec::new())?;
        }
    }
    derive_partition(table, &mut parts, partitions);
    let mut out = Vec::new();
    let mut unset: Option<&str> = None;
    for (name, part) in &parts {
        match (part.is_set(), unset) {
            (true, Some(missing)) => {
                let hint = match (missing, table) {
                    ("partition_id", Table::State | Table::Inbox) => {
                        " (or service_name and service_key, which it derives from)"
                    }
                    ("partition_id", Table::System | Table::Dedup | Table::Outbox | Table::Fsm) => {
                        ""
                    }
                    ("partition_id", _) => " (or invocation_id, which it derives from)",
                    _ => "",
                };
                return Err(Invalid(format!(
                    "{} key sets {name} but not {missing}{hint}: a prefix sets leading fields only",
                    table.name()
                )));
            }
            (true, None) => part.encode(name, &mut out)?,
            (false, None) => unset = Some(name),
            (false, Some(_)) => {}
        }
    }
    match unset {
        Some(missing) if whole => Err(Invalid(format!(
            "a key filter on table {} needs every field, {missing} is unset (use a prefix filter)",
            table.name()
        ))),
        _ => Ok((table, out)),
    }
}

/// The typed key of a stored row of `table`; `None` when the bytes do not follow the table's layout.
pub fn decode(table: Table, mut bytes: &[u8]) -> Option<pb::Key> {
    let (_, shape) = parts(&from_parts(table, &[]));
    let mut parsed = Vec::with_capacity(shape.len());
    for (_, part) in &shape {
        parsed.push(part.parse(&mut bytes)?);
    }
    bytes.is_empty().then(|| pb::Key {
        key: Some(from_parts(table, &parsed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{keys, ServiceId};

    fn key(k: K) -> pb::Key {
        pb::Key { key: Some(k) }
    }

    #[test]
    fn encoded_keys_match_the_processor_layouts_and_decode_back() {
        let service = ServiceId {
            service: "counter".into(),
            key: bytes::Bytes::from_static(b"\x03bob"),
        };
        let p = (service.partition_key() % 64) as u32;
        let state = key(K::State(pb::State {
            partition_id: None,
            service_name: Some("counter".into()),
            service_key: Some(b"\x03bob".to_vec()),
            state_key: Some(b"total".to_vec()),
        }));
        let (table, bytes) = encode(&state, true, 64).unwrap();
        assert_eq!(table, Table::State);
        assert_eq!(bytes, keys::state(p, &service, b"total"));
        let decoded = decode(Table::State, &bytes).unwrap();
        let K::State(s) = decoded.key.unwrap() else {
            panic!("not a state key")
        };
        assert_eq!(s.partition_id, Some(p));
        assert_eq!(s.state_key.as_deref(), Some(&b"total"[..]));

        let id = InvocationId::new(service.partition_key());
        let journal = key(K::Journal(pb::Journal {
            partition_id: None,
            invocation_id: Some(id.as_bytes().to_vec()),
            journal_index: Some(3),
        }));
        let (_, bytes) = encode(&journal, true, 64).unwrap();
        assert_eq!(bytes, keys::journal(p, &id, 3));
        assert_eq!(
            decode(Table::Journal, &bytes),
            Some(journal.clone()).map(|mut j| {
                if let Some(K::Journal(j)) = &mut j.key {
                    j.partition_id = Some(p);
                }
                j
            })
        );
        assert_eq!(decode(Table::Journal, &bytes[..10]), None);
    }

    #[test]
    fn bad_filters_name_what_is_wrong() {
        let gap = key(K::Journal(pb::Journal {
            partition_id: Some(1),
            invocation_id: None,
            journal_index: Some(2),
        }));
        let err = encode(&gap, false, 64).unwrap_err().0;
        assert!(err.contains("journal_index but not invocation_id"), "{err}");
        let partial = key(K::Status(pb::Status {
            partition_id: Some(1),
            invocation_id: None,
        }));
        let err = encode(&partial, true, 64).unwrap_err().0;
        assert!(err.contains("invocation_id is unset"), "{err}");
        let short = key(K::Status(pb::Status {
            partition_id: None,
            invocation_id: Some(vec![1, 2]),
        }));
        let err = encode(&short, false, 64).unwrap_err().0;
        assert!(err.contains("24 bytes, got 2"), "{err}");
        assert!(encode(&pb::Key { key: None }, false, 64).is_err());
        // An empty key message selects the whole table.
        let all = key(K::Outbox(pb::Outbox::default()));
        assert_eq!(encode(&all, false, 64).unwrap(), (Table::Outbox, vec![]));
    }
}
