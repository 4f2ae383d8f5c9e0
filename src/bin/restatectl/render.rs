//! How restatectl shows things: aligned tables for people, JSON values for scripts, and the decoding
//! of stored rows (the runtime's own row types) and keys.

use std::fmt::Write;

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as Reflected};
use restate::partition::rows::{self, outbox_message, Entry};
use restate::partition::InvocationId;
use restate::proto::storage::{key::Key as K, Key};
use serde_json::{json, Value};

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON document.
pub fn json_out(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("json serializes")
    );
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A user value: JSON when it parses as JSON, else UTF-8 text, else hex; with the encoding's name.
pub fn user_value(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return (value, "json");
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => (Value::String(text.to_owned()), "utf8"),
        Err(_) => (Value::String(hex(bytes)), "hex"),
    }
}

/// A short printable form of a value (JSON compact, text, or hex), at most `max` characters.
pub fn short(bytes: &[u8], max: usize) -> String {
    let printable = match user_value(bytes) {
        (Value::String(s), _) if s.chars().any(char::is_control) => hex(bytes),
        (Value::String(s), _) => s,
        (v, _) => v.to_string(),
    };
    if printable.chars().count() > max {
        let cut: String = printable.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        printable
    }
}

/// A service key as people wrote it: the string of a length-prefixed (string/bytes key field) key,
/// else hex; empty for singletons.
pub fn service_key(key: &[u8]) -> String {
    let mut rest = key;
    if let Ok(len) = prost::encoding::decode_varint(&mut rest) {
        if len as usize == rest.len() {
            if let Ok(text) = std::str::from_utf8(rest) {
                return text.to_owned();
            }
        }
    }
    if key.len() == 16 {
        // Unkeyed services get a random 16-byte key per call.
        return format!("<{}>", hex(key));
    }
    hex(key)
}

/// The key bytes of `key` under the usual key rules of a string key field (length-prefixed).
pub fn encode_string_key(key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(key.len() as u64, &mut out);
    out.extend_from_slice(key.as_bytes());
    out
}

/// "3 s ago", "2 min ago" ... from unix milliseconds.
pub fn age(created_ms: u64) -> String {
    let now = rows::now_ms();
    if created_ms == 0 {
        return "-".into();
    }
    let secs = now.saturating_sub(created_ms) / 1000;
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// The name of a journal entry type.
pub fn entry_name(ty: u16) -> String {
    use restate::protocol::types::*;
    match ty {
        POLL_INPUT_STREAM => "PollInputStream".into(),
        OUTPUT_STREAM => "OutputStream".into(),
        GET_STATE => "GetState".into(),
        SET_STATE => "SetState".into(),
        CLEAR_STATE => "ClearState".into(),
        SLEEP => "Sleep".into(),
        INVOKE => "Invoke".into(),
        BACKGROUND_INVOKE => "BackgroundInvoke".into(),
        AWAKEABLE => "Awakeable".into(),
        COMPLETE_AWAKEABLE => "CompleteAwakeable".into(),
        SIDE_EFFECT => "SideEffect".into(),
        other => format!("Custom(0x{other:04X})"),
    }
}

/// Entry types that get a completion (a result from the runtime).
pub fn completable(ty: u16) -> bool {
    use restate::protocol::types::*;
    matches!(
        ty,
        POLL_INPUT_STREAM | GET_STATE | SLEEP | INVOKE | AWAKEABLE
    )
}

/// A journal entry as JSON.
pub fn entry_json(index: u32, entry: &Entry) -> Value {
    json!({
        "index": index,
        "type": entry_name(entry.ty),
        "type_code": entry.ty,
        "completed": entry.completed,
        "payload": base64::engine::general_purpose::STANDARD.encode(&entry.payload),
    })
}

/// A status row as JSON.
pub fn status_json(id: &str, status: &rows::Status) -> Value {
    json!({
        "id": id,
        "service": status.service,
        "key": service_key(&status.key),
        "method": status.method,
        "status": status_name(status, rows::now_ms()),
        "attempts": status.attempts,
        "last_failure": (!status.last_failure.is_empty()).then_some(&status.last_failure),
        "next_retry_ms": (status.next_retry_ms > 0).then_some(status.next_retry_ms),
        "waiting_for_entries": status.waiting,
        "keyed": status.keyed,
        // When the status last changed (started, suspended, resumed).
        "since_ms": status.created_ms,
        "caller": status.response_sink.as_ref().map(|s| json!({
            "invocation_id": hex(&s.caller),
            "entry_index": s.entry_index,
        })),
        "idempotency_key": (!status.idempotency_key.is_empty()).then_some(&status.idempotency_key),
    })
}

/// suspended, backing-off (waiting for its next attempt after a failure) or running.
pub fn status_name(status: &rows::Status, now_ms: u64) -> &'static str {
    if status.suspended {
        "suspended"
    } else if status.next_retry_ms > now_ms {
        "backing-off"
    } else {
        "running"
    }
}

/// An inbox row as JSON.
pub fn inbox_json(service: &str, key: &[u8], sequence: u64, entry: &rows::InboxEntry) -> Value {
    json!({
        "sequence": sequence,
        "id": hex(&entry.invocation_id),
        "service": service,
        "key": service_key(key),
        "method": entry.method,
        "status": "inbox",
        "argument": base64::engine::general_purpose::STANDARD.encode(&entry.argument),
        // When it was queued.
        "since_ms": entry.created_ms,
    })
}

fn request_json(r: &rows::InvocationRequest) -> Value {
    json!({
        "id": hex(&r.invocation_id),
        "service": r.service,
        "key": service_key(&r.key),
        "method": r.method,
    })
}

/// The stored row of a table as JSON, decoded with the runtime's row types (`null` when it does not
/// decode).
pub fn row_json(key: &K, value: &[u8]) -> Value {
    let decoded = match key {
        K::State(_) => Some(user_value(value).0),
        K::Status(k) => rows::Status::decode(value)
            .ok()
            .map(|s| status_json(&hex(k.invocation_id.as_deref().unwrap_or_default()), &s)),
        K::Inbox(k) => rows::InboxEntry::decode(value).ok().map(|e| {
            inbox_json(
                k.service_name.as_deref().unwrap_or_default(),
                k.service_key.as_deref().unwrap_or_default(),
                k.sequence_number.unwrap_or_default(),
                &e,
            )
        }),
        K::Journal(k) => Entry::decode(value).map(|e| entry_json(k.journal_index.unwrap_or(0), &e)),
        K::Outbox(_) => rows::OutboxMessage::decode(value)
            .ok()
            .map(|m| match m.message {
                Some(outbox_message::Message::Invoke(r)) => json!({ "invoke": request_json(&r) }),
                Some(outbox_message::Message::Complete(c)) => json!({ "complete": {
                    "id": hex(&c.invocation_id), "entry_index": c.entry_index,
                }}),
                None => Value::Null,
            }),
        K::Timers(_) => rows::Timer::decode(value).ok().map(|t| match t.invoke {
            Some(r) => json!({ "invoke": request_json(&r) }),
            None => json!("complete_sleep"),
        }),
        K::Idempotency(_) => rows::Idempotent::decode(value).ok().map(|i| {
            json!({
                "failed": i.failed,
                "value": user_value(&i.value).0,
                "code": i.code,
                "message": i.message,
                "expires_ms": i.expires_ms,
            })
        }),
        K::Deduplication(_) => <[u8; 8]>::try_from(value)
            .ok()
            .map(|b| json!({ "last_sequence": u64::from_be_bytes(b) })),
        K::System(_) => <[u8; 4]>::try_from(value)
            .ok()
            .map(|b| json!(u32::from_be_bytes(b))),
        K::Completions(_) | K::PartitionStateMachine(_) => None,
    };
    decoded.unwrap_or(Value::Null)
}

/// The descriptors of the storage API (key messages for `scan`).
pub fn pool() -> DescriptorPool {
    DescriptorPool::decode(restate::proto::storage::DESCRIPTOR_SET).expect("embedded descriptors")
}

/// The table name of a key (the `Key` oneof field's name) and its set fields, as (name, value).
pub fn key_fields(pool: &DescriptorPool, key: &Key) -> (String, Vec<(String, Value)>) {
    let descriptor = pool
        .get_message_by_name("dev.restate.storage.scan.v1.Key")
        .expect("Key message");
    let message = DynamicMessage::decode(descriptor, key.encode_to_vec().as_slice())
        .expect("Key round-trips");
    let Some((field, Reflected::Message(inner))) = message.fields().next() else {
        return (String::new(), Vec::new());
    };
    let fields = inner
        .fields()
        .map(|(f, v)| (f.name().to_owned(), field_json(f.name(), v)))
        .collect();
    (field.name().to_owned(), fields)
}

fn field_json(name: &str, value: &Reflected) -> Value {
    match value {
        Reflected::U32(v) => json!(v),
        Reflected::U64(v) => json!(v),
        Reflected::String(s) => json!(s),
        Reflected::Bytes(b) if name == "invocation_id" => json!(hex(b)),
        Reflected::Bytes(b) if name == "service_key" => json!(service_key(b)),
        Reflected::Bytes(b) => match std::str::from_utf8(b) {
            Ok(text) if !text.chars().any(char::is_control) => json!(text),
            _ => json!(format!("hex:{}", hex(b))),
        },
        other => json!(format!("{other:?}")),
    }
}

/// Parses an invocation id: 48 hex digits, or a sid (`service-key-<hex>`).
pub fn parse_id(text: &str) -> Option<InvocationId> {
    InvocationId::from_hex(text.rsplit('-').next()?)
}
