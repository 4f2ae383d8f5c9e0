//! The commands: each asks the servers, then prints a table or one JSON document.

use http::Method;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, Value as Reflected};
use restate::partition::rows::{self, Entry};
use restate::partition::InvocationId;
use restate::proto::storage::{self as pb, key::Key as K, scan_request::Filter, Key, ScanRequest};
use serde_json::{json, Value};

use crate::client::{self, Error, Result, Server};
use crate::render::{self, hex, table};
use crate::{
    Command, EndpointsCommand, InstanceArgs, InvocationsCommand, KvCommand, ScanArgs,
    ServicesCommand, StatusFilter,
};

/// Where the servers are and how to print.
pub struct Servers {
    pub storage: Server,
    pub meta: Server,
    pub json: bool,
}

/// Runs one command.
pub async fn run(s: &Servers, command: Command) -> Result<()> {
    match command {
        Command::Services(ServicesCommand::List) => services_list(s).await,
        Command::Services(ServicesCommand::Describe { name }) => services_describe(s, &name).await,
        Command::Endpoints(EndpointsCommand::List) => endpoints_list(s).await,
        Command::Endpoints(EndpointsCommand::Register { uri }) => endpoints_register(s, &uri).await,
        Command::Endpoints(EndpointsCommand::Remove { id }) => endpoints_remove(s, &id).await,
        Command::Kv(KvCommand::Get(instance)) => kv_get(s, &instance).await,
        Command::Invocations(InvocationsCommand::List { service, status }) => {
            invocations_list(s, service.as_deref(), status).await
        }
        Command::Invocations(InvocationsCommand::Describe { id }) => describe(s, &id).await,
        Command::Invocations(InvocationsCommand::Cancel { id }) => cancel(s, &id).await,
        Command::Inbox(instance) => inbox(s, &instance).await,
        Command::Scan(args) => scan(s, &args).await,
    }
}

/// A meta call that must succeed (2xx); its error message otherwise.
async fn meta(s: &Servers, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
    let (status, value) = client::rest(&s.meta, method, path, body).await?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["message"].as_str().unwrap_or("no message");
    Err(Error::Status(format!(
        "the meta API answered HTTP {status}: {message}"
    )))
}

/// A meta GET whose 404 means "nothing there" (exit 0 with a line saying so).
async fn meta_find(s: &Servers, path: &str) -> Result<Option<Value>> {
    let (status, value) = client::rest(&s.meta, Method::GET, path, None).await?;
    match status {
        200..=299 => Ok(Some(value)),
        404 => Ok(None),
        _ => {
            let message = value["message"].as_str().unwrap_or("no message");
            Err(Error::Status(format!(
                "the meta API answered HTTP {status}: {message}"
            )))
        }
    }
}

/// Prints "nothing" results: `[]`/`null` for scripts, a line for people.
fn nothing(s: &Servers, json: Value, line: &str) {
    if s.json {
        render::json_out(&json);
    } else {
        println!("{line}");
    }
}

async fn services_list(s: &Servers) -> Result<()> {
    let value = meta(s, Method::GET, "/services", None).await?;
    let services = value["services"].as_array().cloned().unwrap_or_default();
    if s.json {
        render::json_out(&json!({ "services": services }));
        return Ok(());
    }
    if services.is_empty() {
        println!("no services registered");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|svc| {
            vec![
                text(&svc["name"]),
                text(&svc["instance_type"]),
                svc["methods"].as_array().map_or(0, Vec::len).to_string(),
                text(&svc["revision"]),
                text(&svc["endpoint_id"]),
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "METHODS", "REVISION", "ENDPOINT"], &rows);
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn services_describe(s: &Servers, name: &str) -> Result<()> {
    let Some(service) = meta_find(s, &format!("/services/{name}")).await? else {
        nothing(s, Value::Null, &format!("service {name} not found"));
        return Ok(());
    };
    let mut methods = Vec::new();
    for method in service["methods"].as_array().cloned().unwrap_or_default() {
        let path = format!("/services/{name}/methods/{}", text(&method));
        if let Some(m) = meta_find(s, &path).await? {
            methods.push(m);
        }
    }
    if s.json {
        let mut out = service.clone();
        out["methods"] = Value::Array(methods);
        render::json_out(&out);
        return Ok(());
    }
    println!("name:      {}", text(&service["name"]));
    println!("type:      {}", text(&service["instance_type"]));
    println!("endpoint:  {}", text(&service["endpoint_id"]));
    println!("revision:  {}", text(&service["revision"]));
    println!("public:    {}", text(&service["public"]));
    println!();
    let rows: Vec<Vec<String>> = methods
        .iter()
        .map(|m| {
            vec![
                text(&m["method_name"]),
                text(&m["input_type"]),
                text(&m["output_type"]),
                text(&m["key_field"]),
            ]
        })
        .collect();
    table(&["METHOD", "INPUT", "OUTPUT", "KEY FIELD"], &rows);
    Ok(())
}

async fn endpoints_list(s: &Servers) -> Result<()> {
    let value = meta(s, Method::GET, "/endpoints", None).await?;
    let endpoints = value["endpoints"].as_array().cloned().unwrap_or_default();
    if s.json {
        render::json_out(&json!({ "endpoints": endpoints }));
        return Ok(());
    }
    if endpoints.is_empty() {
        println!("no endpoints registered");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let services: Vec<String> = e["services"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|svc| text(&svc["name"]))
                .collect();
            vec![
                text(&e["id"]),
                text(&e["uri"]),
                text(&e["protocol_type"]),
                services.join(","),
            ]
        })
        .collect();
    table(&["ID", "URI", "PROTOCOL", "SERVICES"], &rows);
    Ok(())
}

async fn endpoints_register(s: &Servers, uri: &str) -> Result<()> {
    let value = meta(s, Method::POST, "/endpoints", Some(&json!({ "uri": uri }))).await?;
    if s.json {
        render::json_out(&value);
        return Ok(());
    }
    let services: Vec<String> = value["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|svc| {
            format!(
                "{} (revision {})",
                text(&svc["name"]),
                text(&svc["revision"])
            )
        })
        .collect();
    println!("registered endpoint {}", text(&value["id"]));
    for service in services {
        println!("  {service}");
    }
    Ok(())
}

async fn endpoints_remove(s: &Servers, id: &str) -> Result<()> {
    let path = format!("/endpoints/{id}?force=true");
    let (status, value) = client::rest(&s.meta, Method::DELETE, &path, None).await?;
    match status {
        200..=299 => nothing(
            s,
            json!({ "removed": id }),
            &format!("removed endpoint {id}"),
        ),
        404 => nothing(
            s,
            json!({ "removed": null }),
            &format!("endpoint {id} not found"),
        ),
        _ => {
            let message = value["message"].as_str().unwrap_or("no message");
            return Err(Error::Status(format!(
                "the meta API answered HTTP {status}: {message}"
            )));
        }
    }
    Ok(())
}

/// Streams every row matching `filter`.
async fn rows(s: &Servers, filter: Filter, limit: Option<u64>) -> Result<Vec<pb::Pair>> {
    select(s, filter, limit, Some).await
}

/// Streams the rows matching `filter` and keeps what `keep` makes of them (rows it drops are never
/// held, however many the scan reads).
async fn select<T>(
    s: &Servers,
    filter: Filter,
    limit: Option<u64>,
    mut keep: impl FnMut(pb::Pair) -> Option<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let request = ScanRequest {
        filter: Some(filter),
        limit,
    };
    client::scan(&s.storage, &request, |pair| {
        out.extend(keep(pair));
        Ok(())
    })
    .await?;
    Ok(out)
}

/// The partition of an invocation: the id carries its partition key; the partition count is stored
/// in the `system` table.
async fn partition_of(s: &Servers, id: &InvocationId) -> Result<u32> {
    let count = key(K::System(pb::System {
        key: Some(b"partitions".to_vec()),
    }));
    let partitions = select(s, Filter::Key(count), None, |pair| {
        <[u8; 4]>::try_from(pair.value.as_slice())
            .ok()
            .map(u32::from_be_bytes)
    })
    .await?;
    match partitions.first() {
        Some(&n) if n > 0 => Ok(id.partition(n)),
        _ => Err(Error::Status(
            "the storage API shows no partition count (system table)".into(),
        )),
    }
}

fn key(k: K) -> Key {
    Key { key: Some(k) }
}

/// The stored key bytes of an instance: `--key-hex`, else the string key rules, empty for singletons.
fn instance_key(instance: &InstanceArgs) -> Result<Vec<u8>> {
    match (&instance.key_hex, &instance.key) {
        (Some(h), _) => {
            parse_hex(h).ok_or_else(|| Error::Usage(format!("--key-hex {h} is not hex")))
        }
        (None, Some(k)) => Ok(render::encode_string_key(k)),
        (None, None) => Ok(Vec::new()),
    }
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn shown_key(instance: &InstanceArgs) -> String {
    instance
        .key
        .clone()
        .or_else(|| instance.key_hex.clone())
        .unwrap_or_default()
}

async fn kv_get(s: &Servers, instance: &InstanceArgs) -> Result<()> {
    let prefix = key(K::State(pb::State {
        partition_id: None,
        service_name: Some(instance.service.clone()),
        service_key: Some(instance_key(instance)?),
        state_key: None,
    }));
    let pairs = rows(s, Filter::Prefix(prefix), None).await?;
    let entries: Vec<(String, Value, &'static str)> = pairs
        .iter()
        .map(|pair| {
            let name = match pair.key.as_ref().and_then(|k| k.key.as_ref()) {
                Some(K::State(k)) => {
                    String::from_utf8_lossy(k.state_key.as_deref().unwrap_or_default()).into_owned()
                }
                _ => String::new(),
            };
            let (value, encoding) = render::user_value(&pair.value);
            (name, value, encoding)
        })
        .collect();
    let shown = shown_key(instance);
    if s.json {
        let state: Vec<Value> = entries
            .iter()
            .map(|(name, value, encoding)| json!({ "name": name, "value": value, "encoding": encoding }))
            .collect();
        render::json_out(&json!({ "service": instance.service, "key": shown, "state": state }));
        return Ok(());
    }
    if entries.is_empty() {
        println!("no state for {} {shown}", instance.service);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|(name, value, _)| vec![name, text(&value)])
        .collect();
    table(&["KEY", "VALUE"], &rows);
    Ok(())
}

/// The status rows and inbox entries that `keep` accepts, as JSON rows of `invocations list` (the
/// inbox is skipped when `inbox` is false).
async fn invocations(
    s: &Servers,
    keep: impl Fn(&Value) -> bool,
    inbox: bool,
) -> Result<Vec<Value>> {
    let statuses = Filter::Prefix(key(K::Status(Default::default())));
    let mut out = select(s, statuses, None, |pair| {
        let K::Status(k) = pair.key?.key? else {
            return None;
        };
        let status = rows::Status::decode(pair.value.as_slice()).ok()?;
        let id = hex(k.invocation_id.as_deref().unwrap_or_default());
        Some(render::status_json(&id, &status)).filter(&keep)
    })
    .await?;
    if inbox {
        let queued = Filter::Prefix(key(K::Inbox(Default::default())));
        out.extend(
            select(s, queued, None, |pair| {
                let K::Inbox(k) = pair.key?.key? else {
                    return None;
                };
                let entry = rows::InboxEntry::decode(pair.value.as_slice()).ok()?;
                Some(render::inbox_json(
                    k.service_name.as_deref().unwrap_or_default(),
                    k.service_key.as_deref().unwrap_or_default(),
                    k.sequence_number.unwrap_or_default(),
                    &entry,
                ))
                .filter(&keep)
            })
            .await?,
        );
    }
    Ok(out)
}

async fn invocations_list(
    s: &Servers,
    service: Option<&str>,
    status: Option<StatusFilter>,
) -> Result<()> {
    let wanted = status.map(|st| match st {
        StatusFilter::Running => "running",
        StatusFilter::Suspended => "suspended",
        StatusFilter::BackingOff => "backing-off",
        StatusFilter::Inbox => "inbox",
    });
    let keep = |i: &Value| {
        service.is_none_or(|svc| i["service"] == svc) && wanted.is_none_or(|w| i["status"] == w)
    };
    let list = invocations(s, keep, wanted.is_none_or(|w| w == "inbox")).await?;
    if s.json {
        render::json_out(&json!({ "invocations": list }));
        return Ok(());
    }
    if list.is_empty() {
        println!("no invocations");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                text(&i["id"]),
                format!("{}/{}", text(&i["service"]), text(&i["method"])),
                text(&i["key"]),
                text(&i["status"]),
                i["attempts"].as_u64().map_or("-".into(), |a| a.to_string()),
                clip(&text(&i["last_failure"]), 60),
                render::age(i["since_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TARGET",
            "KEY",
            "STATUS",
            "ATTEMPTS",
            "LAST FAILURE",
            "SINCE",
        ],
        &rows,
    );
    Ok(())
}

fn parse_id(text: &str) -> Result<InvocationId> {
    render::parse_id(text).ok_or_else(|| {
        Error::Usage(format!(
            "{text} is not an invocation id (48 hex digits) or sid (service-key-id)"
        ))
    })
}

fn by_id(id: &InvocationId, k: fn(Option<Vec<u8>>) -> K) -> Key {
    key(k(Some(id.as_bytes().to_vec())))
}

async fn describe(s: &Servers, text_id: &str) -> Result<()> {
    let id = parse_id(text_id)?;
    let status_key = by_id(&id, |i| {
        K::Status(pb::Status {
            partition_id: None,
            invocation_id: i,
        })
    });
    let status = rows(s, Filter::Key(status_key), None)
        .await?
        .first()
        .and_then(|p| rows::Status::decode(p.value.as_slice()).ok());
    let journal_key = by_id(&id, |i| {
        K::Journal(pb::Journal {
            invocation_id: i,
            ..Default::default()
        })
    });
    let journal: Vec<(u32, Entry)> = rows(s, Filter::Prefix(journal_key), None)
        .await?
        .into_iter()
        .filter_map(|p| match p.key?.key? {
            K::Journal(k) => Some((k.journal_index?, Entry::decode(&p.value)?)),
            _ => None,
        })
        .collect();
    let mut summary = match &status {
        Some(status) => render::status_json(&id.to_hex(), status),
        None => match queued(s, &id).await? {
            Some(entry) => entry,
            None => {
                nothing(
                    s,
                    Value::Null,
                    &format!("invocation {} not found", id.to_hex()),
                );
                return Ok(());
            }
        },
    };
    let timers = wake_ups(s, &id).await?;
    summary["journal"] = journal
        .iter()
        .map(|(i, e)| render::entry_json(*i, e))
        .collect();
    summary["timers"] = json!(timers);
    // Completable entries without their result yet: what a running invocation is waiting for.
    summary["pending_entries"] = journal
        .iter()
        .filter(|(_, e)| !e.completed && render::completable(e.ty))
        .map(|(i, _)| json!(i))
        .collect();
    if s.json {
        render::json_out(&summary);
        return Ok(());
    }
    print_description(&summary, &journal, &timers);
    Ok(())
}

fn print_description(summary: &Value, journal: &[(u32, Entry)], timers: &[Value]) {
    println!("id:        {}", text(&summary["id"]));
    println!(
        "target:    {}/{}  key {}",
        text(&summary["service"]),
        text(&summary["method"]),
        text(&summary["key"])
    );
    println!("status:    {}", text(&summary["status"]));
    if let Some(attempts) = summary["attempts"].as_u64() {
        println!("attempts:  {attempts}");
    }
    if let Some(failure) = summary["last_failure"].as_str() {
        println!("failure:   {failure}");
    }
    if let Some(next) = summary["next_retry_ms"].as_u64() {
        let now = restate::partition::rows::now_ms();
        if next > now {
            println!("next try:  in {} ms", next - now);
        }
    }
    println!(
        "since:     {}",
        render::age(summary["since_ms"].as_u64().unwrap_or(0))
    );
    let waiting: Vec<String> = summary["waiting_for_entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|index| {
            let ty = journal
                .iter()
                .find(|(i, _)| Some(u64::from(*i)) == index.as_u64())
                .map(|(_, e)| render::entry_name(e.ty))
                .unwrap_or_default();
            format!("entry {index} {ty}")
        })
        .collect();
    if !waiting.is_empty() {
        println!("waits on:  {}", waiting.join(", "));
    }
    let pending: Vec<String> = journal
        .iter()
        .filter(|(_, e)| !e.completed && render::completable(e.ty))
        .map(|(i, e)| format!("entry {i} {}", render::entry_name(e.ty)))
        .collect();
    if waiting.is_empty() && !pending.is_empty() {
        println!("pending:   {}", pending.join(", "));
    }
    for timer in timers {
        println!(
            "timer:     entry {} wakes at {} ms (in {})",
            text(&timer["journal_index"]),
            text(&timer["wake_ms"]),
            text(&timer["in"])
        );
    }
    println!();
    let rows: Vec<Vec<String>> = journal
        .iter()
        .map(|(index, entry)| {
            vec![
                index.to_string(),
                render::entry_name(entry.ty),
                if entry.completed { "yes" } else { "no" }.into(),
                render::short(&entry.payload, 60),
            ]
        })
        .collect();
    table(&["INDEX", "ENTRY", "COMPLETED", "PAYLOAD"], &rows);
}

/// An inbox entry with this id (an invocation that has not started yet), from its partition's inbox.
async fn queued(s: &Servers, id: &InvocationId) -> Result<Option<Value>> {
    let prefix = key(K::Inbox(pb::Inbox {
        partition_id: Some(partition_of(s, id).await?),
        ..Default::default()
    }));
    let found = select(s, Filter::Prefix(prefix), None, |pair| {
        let K::Inbox(k) = pair.key?.key? else {
            return None;
        };
        let entry = rows::InboxEntry::decode(pair.value.as_slice()).ok()?;
        (entry.invocation_id.as_ref() == id.as_bytes()).then(|| {
            render::inbox_json(
                k.service_name.as_deref().unwrap_or_default(),
                k.service_key.as_deref().unwrap_or_default(),
                k.sequence_number.unwrap_or_default(),
                &entry,
            )
        })
    })
    .await?;
    Ok(found.into_iter().next())
}

/// The timers of an invocation (its sleeps), from its partition's timers (ordered by wake-up time,
/// so not a prefix by id).
async fn wake_ups(s: &Servers, id: &InvocationId) -> Result<Vec<Value>> {
    let prefix = key(K::Timers(pb::Timers {
        partition_id: Some(partition_of(s, id).await?),
        ..Default::default()
    }));
    let now = rows::now_ms();
    select(s, Filter::Prefix(prefix), None, |pair| {
        match pair.key?.key? {
            K::Timers(k) if k.invocation_id.as_deref() == Some(&id.as_bytes()[..]) => {
                let wake = k.timestamp.unwrap_or(0);
                Some(json!({
                    "journal_index": k.journal_index,
                    "wake_ms": wake,
                    "in": format!("{} ms", wake.saturating_sub(now)),
                }))
            }
            _ => None,
        }
    })
    .await
}

async fn cancel(s: &Servers, text_id: &str) -> Result<()> {
    let id = parse_id(text_id)?;
    let body = json!({ "sid": id.to_hex() });
    let (status, value) =
        client::rest(&s.meta, Method::DELETE, "/invocations", Some(&body)).await?;
    match status {
        200..=299 => nothing(
            s,
            json!({ "cancelled": id.to_hex() }),
            &format!("cancelled {}", id.to_hex()),
        ),
        404 => nothing(
            s,
            json!({ "cancelled": null }),
            &format!("invocation {} not found", id.to_hex()),
        ),
        _ => {
            let message = value["message"].as_str().unwrap_or("no message");
            return Err(Error::Status(format!(
                "the meta API answered HTTP {status}: {message}"
            )));
        }
    }
    Ok(())
}

async fn inbox(s: &Servers, instance: &InstanceArgs) -> Result<()> {
    let prefix = key(K::Inbox(pb::Inbox {
        partition_id: None,
        service_name: Some(instance.service.clone()),
        service_key: Some(instance_key(instance)?),
        sequence_number: None,
    }));
    let entries: Vec<Value> = rows(s, Filter::Prefix(prefix), None)
        .await?
        .into_iter()
        .filter_map(|pair| {
            let K::Inbox(k) = pair.key?.key? else {
                return None;
            };
            let entry = rows::InboxEntry::decode(pair.value.as_slice()).ok()?;
            Some(render::inbox_json(
                &instance.service,
                k.service_key.as_deref().unwrap_or_default(),
                k.sequence_number.unwrap_or_default(),
                &entry,
            ))
        })
        .collect();
    let shown = shown_key(instance);
    if s.json {
        render::json_out(&json!({ "service": instance.service, "key": shown, "inbox": entries }));
        return Ok(());
    }
    if entries.is_empty() {
        println!("the inbox of {} {shown} is empty", instance.service);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                text(&e["sequence"]),
                text(&e["id"]),
                text(&e["method"]),
                render::age(e["since_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    table(&["SEQ", "ID", "METHOD", "AGE"], &rows);
    Ok(())
}

/// The `Key` oneof field of a table name (`dedup` → `deduplication`, ...).
fn table_field(table: &str) -> Result<&'static str> {
    Ok(match table {
        "state" => "state",
        "status" => "status",
        "inbox" => "inbox",
        "journal" => "journal",
        "outbox" => "outbox",
        "timers" => "timers",
        "dedup" | "deduplication" => "deduplication",
        "idempotency" => "idempotency",
        "completions" => "completions",
        "fsm" | "partition_state_machine" => "partition_state_machine",
        "system" => "system",
        other => {
            return Err(Error::Usage(format!(
                "unknown table {other}: use state, status, inbox, journal, outbox, timers, dedup, \
                 idempotency, completions, fsm or system"
            )))
        }
    })
}

/// A key of `table` from `name=value,...` (numbers; strings; bytes as text or `hex:...`; an
/// invocation_id as hex or sid).
fn parse_key(table: &str, fields: &str) -> Result<Key> {
    let pool = render::pool();
    let key_descriptor = pool
        .get_message_by_name("dev.restate.storage.scan.v1.Key")
        .expect("Key message");
    let field = key_descriptor
        .get_field_by_name(table_field(table)?)
        .expect("table field");
    let Kind::Message(table_descriptor) = field.kind() else {
        unreachable!("table fields are messages")
    };
    let mut inner = DynamicMessage::new(table_descriptor.clone());
    for pair in fields.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("{pair}: expected name=value")))?;
        let f = table_descriptor.get_field_by_name(name).ok_or_else(|| {
            let names: Vec<String> = table_descriptor
                .fields()
                .map(|f| f.name().to_owned())
                .collect();
            Error::Usage(format!(
                "table {table} has no key field {name} (fields: {})",
                names.join(", ")
            ))
        })?;
        let bad = |e: String| Error::Usage(format!("{name}={value}: {e}"));
        let parsed = match f.kind() {
            Kind::Uint32 => Reflected::U32(value.parse().map_err(|e| bad(format!("{e}")))?),
            Kind::Uint64 => Reflected::U64(value.parse().map_err(|e| bad(format!("{e}")))?),
            Kind::String => Reflected::String(value.to_owned()),
            Kind::Bytes if name == "invocation_id" => {
                Reflected::Bytes(parse_id(value)?.as_bytes().to_vec().into())
            }
            Kind::Bytes => Reflected::Bytes(match value.strip_prefix("hex:") {
                Some(h) => parse_hex(h).ok_or_else(|| bad("not hex".into()))?.into(),
                None => value.as_bytes().to_vec().into(),
            }),
            other => return Err(bad(format!("unsupported field kind {other:?}"))),
        };
        inner.set_field(&f, parsed);
    }
    let mut outer = DynamicMessage::new(key_descriptor);
    outer.set_field(&field, Reflected::Message(inner));
    Key::decode(outer.encode_to_vec().as_slice()).map_err(|e| Error::Usage(e.to_string()))
}

async fn scan(s: &Servers, args: &ScanArgs) -> Result<()> {
    let filter = match (&args.key, &args.prefix, &args.from, &args.to) {
        (Some(k), ..) => Filter::Key(parse_key(&args.table, k)?),
        (None, Some(p), ..) => Filter::Prefix(parse_key(&args.table, p)?),
        (None, None, Some(from), Some(to)) => Filter::Range(pb::Range {
            start: Some(parse_key(&args.table, from)?),
            end: Some(parse_key(&args.table, to)?),
        }),
        _ => Filter::Prefix(parse_key(&args.table, "")?),
    };
    let pool = render::pool();
    let request = ScanRequest {
        filter: Some(filter),
        limit: args.limit,
    };
    let mut rows = Vec::new();
    let json = s.json;
    let mut count = 0u64;
    client::scan(&s.storage, &request, |pair| {
        count += 1;
        let (_, fields) = pair
            .key
            .as_ref()
            .map(|k| render::key_fields(&pool, k))
            .unwrap_or_default();
        let decoded = pair
            .key
            .as_ref()
            .and_then(|k| k.key.as_ref())
            .map(|k| render::row_json(k, &pair.value))
            .unwrap_or(Value::Null);
        if json {
            let key: serde_json::Map<String, Value> = fields.into_iter().collect();
            rows.push(json!({
                "key": key,
                "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pair.value),
                "decoded": decoded,
            }));
        } else {
            // Printed as they arrive: a long scan shows progress and holds no memory.
            let key: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={}", text(v))).collect();
            let value = match decoded {
                Value::Null => format!("hex:{}", hex(&pair.value)),
                other => other.to_string(),
            };
            println!("{}  {}", key.join(" "), value);
        }
        Ok(())
    })
    .await?;
    if json {
        render::json_out(&json!({ "table": args.table, "rows": rows }));
    } else if count == 0 {
        println!("no rows");
    }
    Ok(())
}

/// At most `max` characters of `text`, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}
