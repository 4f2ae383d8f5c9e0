//! The meta (admin) REST server: service endpoint registration and discovery, the schema registry's
//! read API, health, metrics and the OpenAPI document (shared/docs/protocol.md §0.2, §3.2).

pub mod discovery;
mod openapi;
pub mod requests;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config;
use crate::http::allow::AllowList;
use crate::http::server::Handler;
use crate::http::{full, json_response, Body};
use crate::node::NodeState;
use crate::schema::registry::{self, Registry};
use crate::schema::{self, Schemas, Service, ServiceType};

/// What the meta handlers of a core need.
#[derive(Clone)]
pub struct Context {
    pub node: NodeState,
    pub registry: Arc<Registry>,
    pub config: Arc<config::Meta>,
    /// The proxy for discovery requests, if any.
    pub proxy: Option<String>,
    /// TLS settings for https endpoints.
    pub tls: Arc<rustls::ClientConfig>,
    /// Reaches the core owning an invocation (cancellation).
    pub router: crate::partition::router::Router,
    /// Discoveries in flight on the node (`meta.max_concurrent_discoveries`).
    pub discoveries: Arc<DiscoverySlots>,
    /// `meta.allowed_endpoints`.
    pub allow: Arc<AllowList>,
}

/// The node-wide count of discoveries in flight, bounded by `meta.max_concurrent_discoveries`: each
/// may buffer a response of up to `meta.max_discovery_response_bytes`.
#[derive(Debug)]
pub struct DiscoverySlots {
    in_flight: AtomicUsize,
    limit: usize,
}

/// A discovery's place among [`DiscoverySlots`], given back on drop.
pub struct DiscoverySlot(Arc<DiscoverySlots>);

impl DiscoverySlots {
    /// At most `limit` discoveries at once.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            limit,
        })
    }

    /// A slot, or `None` when `limit` discoveries are in flight (no waiting: the caller retries).
    pub fn try_acquire(self: &Arc<Self>) -> Option<DiscoverySlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| DiscoverySlot(self.clone()))
    }
}

impl Drop for DiscoverySlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An API error: status, message and Restate error code (`{"message", "restate_code"}`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "META0005", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "META0007", message)
    }

    fn into_response(self) -> http::Response<Body> {
        error(self.status, self.code, &self.message)
    }
}

impl From<schema::Error> for ApiError {
    fn from(e: schema::Error) -> Self {
        use schema::descriptor::Error as D;
        use schema::Error as E;
        let (status, code) = match &e {
            E::BadUri { .. } | E::BadProtocolMode(_) => (StatusCode::BAD_REQUEST, "META0005"),
            E::NoServices
            | E::ServiceNotInDescriptors(_)
            | E::ReservedName(_)
            | E::MissingServiceType(_) => (StatusCode::BAD_REQUEST, "META0001"),
            E::KeyedWithoutMethods(_) | E::KeyField { .. } => (StatusCode::BAD_REQUEST, "META0002"),
            E::Descriptor(D::Decode(_)) | E::BadResponse(_) => {
                (StatusCode::BAD_GATEWAY, "META0003")
            }
            E::Descriptor(_) => (StatusCode::BAD_REQUEST, "META0002"),
            E::EndpointExists(_) => (StatusCode::CONFLICT, "META0004"),
            E::TooManyEndpoints(_) => (StatusCode::CONFLICT, "META0011"),
            E::EndpointNotFound(_) | E::ServiceNotFound(_) | E::MethodNotFound { .. } => {
                (StatusCode::NOT_FOUND, "META0007")
            }
            E::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "META0006"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> Self {
        match e {
            registry::Error::Schema(e) => e.into(),
            e @ registry::Error::Persist { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "META0006", e.to_string())
            }
        }
    }
}

impl From<discovery::Error> for ApiError {
    fn from(e: discovery::Error) -> Self {
        match e {
            e @ discovery::Error::BadHeader { .. } => ApiError::bad_request(e.to_string()),
            discovery::Error::Client(
                e @ (crate::http::client::Error::BadUri { .. }
                | crate::http::client::Error::Unsupported(_)),
            ) => ApiError::bad_request(e.to_string()),
            discovery::Error::Client(e @ crate::http::client::Error::NotAllowed { .. }) => {
                ApiError::new(StatusCode::FORBIDDEN, "META0012", e.to_string())
            }
            e => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "META0003",
                format!("discovery failed: {e}"),
            ),
        }
    }
}

/// Requests that need no `meta.auth_token`: `GET /health`, so that probes work without the secret.
pub fn needs_no_token(method: &Method, path: &str) -> bool {
    method == Method::GET && path.trim_end_matches('/') == "/health"
}

/// The answer to a request without the meta bearer token: 401 with `WWW-Authenticate: Bearer`.
pub fn unauthenticated(_: &http::Request<Incoming>) -> http::Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "META0014",
        "missing or wrong bearer token: send `authorization: Bearer <token>` (meta.auth_token)",
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The meta error body: `{"message", "restate_code"}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> http::Response<Body> {
    json_response(status, &json!({ "message": message, "restate_code": code }))
}

/// Builds the meta handler of one core.
pub fn handler(context: Context) -> Handler {
    let context = Rc::new(context);
    Rc::new(move |request| {
        let context = context.clone();
        async move {
            match route(&context, request).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
        .boxed_local()
    })
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

async fn route(ctx: &Context, request: http::Request<Incoming>) -> Result<http::Response<Body>> {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let not_allowed = || {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "META0008",
            format!("{method} is not allowed on {}", clip(&path)),
        ))
    };
    match segments.as_slice() {
        ["health"] => match method {
            Method::GET => Ok(health(&ctx.node)),
            _ => not_allowed(),
        },
        ["metrics"] => match method {
            Method::GET => Ok(metrics(&ctx.node)),
            _ => not_allowed(),
        },
        ["openapi"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, &openapi::document())),
            _ => not_allowed(),
        },
        ["endpoints"] => match method {
            Method::POST => register(ctx, read_json(ctx, request).await?, false).await,
            Method::GET => Ok(ok(list_endpoints(&ctx.registry.snapshot()))),
            _ => not_allowed(),
        },
        ["services", "discover"] | ["endpoint", "discover"] => match method {
            Method::POST => register(ctx, read_json(ctx, request).await?, true).await,
            _ => not_allowed(),
        },
        ["endpoints", id] => match method {
            Method::GET => {
                let schemas = ctx.registry.snapshot();
                let endpoint = schemas.endpoints.get(*id).ok_or_else(|| {
                    ApiError::not_found(format!("endpoint {} not found", clip(id)))
                })?;
                Ok(ok(endpoint_json(&schemas, endpoint)))
            }
            Method::DELETE => delete_endpoint(ctx, id, &query).await,
            _ => not_allowed(),
        },
        ["invocations"] => match method {
            Method::DELETE => cancel(ctx, read_json(ctx, request).await?).await,
            _ => not_allowed(),
        },
        ["services"] => match method {
            Method::GET => {
                let schemas = ctx.registry.snapshot();
                let services: Vec<Value> =
                    schemas.services.values().map(|s| service_json(s)).collect();
                Ok(ok(json!({ "services": services })))
            }
            _ => not_allowed(),
        },
        ["services", name] => match method {
            Method::GET => Ok(ok(service_json(find_service(
                &ctx.registry.snapshot(),
                name,
            )?))),
            Method::PATCH => {
                let patch: requests::PatchService = read_json(ctx, request).await?;
                let name = name.to_string();
                let schemas = ctx
                    .registry
                    .update(|s| Ok((s.set_public(&name, patch.public)?, ())))
                    .await;
                schemas?;
                Ok(ok(service_json(find_service(
                    &ctx.registry.snapshot(),
                    &name,
                )?)))
            }
            _ => not_allowed(),
        },
        ["services", name, "descriptors"] => match method {
            Method::GET => descriptors(&ctx.registry.snapshot(), name),
            _ => not_allowed(),
        },
        ["services", name, "methods"] => match method {
            Method::GET => {
                let schemas = ctx.registry.snapshot();
                let service = find_service(&schemas, name)?;
                Ok(ok(
                    json!({ "methods": service.methods.keys().collect::<Vec<_>>() }),
                ))
            }
            _ => not_allowed(),
        },
        ["services", name, "methods", m] => match method {
            Method::GET => {
                let schemas = ctx.registry.snapshot();
                let (service, method) = schemas.method(name, m)?;
                Ok(ok(method_json(service, method)))
            }
            _ => not_allowed(),
        },
        _ => Err(ApiError::not_found(format!(
            "no route for {method} {}",
            clip(&path)
        ))),
    }
}

/// At most 64 characters of `text` (user input echoed in an error), saying how long it was.
fn clip(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.chars().count() <= SHOWN {
        return text.to_owned();
    }
    let head: String = text.chars().take(SHOWN).collect();
    format!("{head}... ({} bytes)", text.len())
}

fn ok(value: Value) -> http::Response<Body> {
    json_response(StatusCode::OK, &value)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    request: http::Request<Incoming>,
) -> Result<T> {
    let limit = ctx.config.max_request_bytes;
    let body = http_body_util::Limited::new(crate::http::body::guarded(request), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "META0005",
                    format!("request body larger than meta.max_request_bytes ({limit})"),
                )
            } else if let Some(stalled @ crate::http::body::BodyError::Stalled(_)) =
                e.downcast_ref()
            {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "META0005", stalled.to_string())
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    requests::parse(&body)
}

/// Discovers the services behind `uri` and checks them.
async fn discover(
    ctx: &Context,
    uri: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(bytes::Bytes, schema::Discovered)> {
    let raw = discovery::discover(
        uri,
        headers,
        ctx.proxy.as_deref(),
        &ctx.tls,
        &ctx.config,
        &ctx.allow,
    )
    .await?;
    let discovered = schema::discover(&raw)?;
    Ok((raw, discovered))
}

async fn register(
    ctx: &Context,
    request: requests::RegisterRequest,
    legacy: bool,
) -> Result<http::Response<Body>> {
    let (uri, _) = schema::endpoint_id(&request.uri)?;
    let _slot = ctx.discoveries.try_acquire().ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "META0013",
            format!(
                "{} discoveries are in flight (meta.max_concurrent_discoveries); retry later",
                ctx.config.max_concurrent_discoveries
            ),
        )
    })?;
    // The slot is held until the response is stored: it bounds the responses held in memory.
    let (raw, discovered) = discover(ctx, &uri, &request.additional_headers)
        .await
        .inspect_err(
            |e| log::warn!(uri = uri.as_str(); "registering {uri} failed: {}", e.message),
        )?;
    let headers = request.additional_headers;
    let force = request.force;
    let max_endpoints = ctx.config.max_endpoints;
    let registered = ctx
        .registry
        .update_with_discovery(Some(raw.to_vec()), |s| {
            let (next, registered) = s.register(&uri, headers, discovered, force)?;
            if next.endpoints.len() > max_endpoints {
                return Err(schema::Error::TooManyEndpoints(max_endpoints));
            }
            Ok((next, registered))
        })
        .await?;
    drop(raw);
    log::info!(endpoint = registered.id.as_str(), uri = uri.as_str(); "registered {} services", registered.services.len());
    if legacy {
        let names: Vec<&String> = registered.services.iter().map(|(n, _)| n).collect();
        return Ok(ok(json!({ "services": names })));
    }
    let services: Vec<Value> = registered
        .services
        .iter()
        .map(|(name, revision)| json!({ "name": name, "revision": revision }))
        .collect();
    let mut response = json_response(
        StatusCode::CREATED,
        &json!({ "id": registered.id, "services": services }),
    );
    if let Ok(location) = http::HeaderValue::from_str(&format!("/endpoints/{}", registered.id)) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    Ok(response)
}

/// `DELETE /invocations`.
async fn cancel(ctx: &Context, body: requests::CancelInvocation) -> Result<http::Response<Body>> {
    let id = body.invocation_id()?;
    let partition = id.partition(ctx.router.partitions());
    let (reply, found) = futures::channel::oneshot::channel();
    let unavailable =
        |_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "META0010", "shutting down");
    ctx.router
        .send(
            partition,
            crate::partition::processor::Command::Cancel { id, reply },
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "META0010", e.to_string()))?;
    if found.await.map_err(unavailable)? {
        Ok(http::Response::builder()
            .status(StatusCode::OK)
            .body(crate::http::empty())
            .expect("valid response"))
    } else {
        Err(ApiError::not_found(format!(
            "invocation {} not found",
            id.to_hex()
        )))
    }
}

async fn delete_endpoint(ctx: &Context, id: &str, query: &str) -> Result<http::Response<Body>> {
    let force = query
        .split('&')
        .any(|kv| kv == "force=true" || kv == "force");
    if !force {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "META0009",
            "only forced deletion is supported: DELETE /endpoints/{id}?force=true",
        ));
    }
    let id = id.to_owned();
    ctx.registry
        .update(|s| Ok((s.remove_endpoint(&id)?, ())))
        .await?;
    Ok(json_response(StatusCode::ACCEPTED, &json!({})))
}

fn find_service<'a>(schemas: &'a Schemas, name: &str) -> Result<&'a Arc<Service>> {
    schemas
        .services
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("service {name} not found")))
}

fn instance_type(t: ServiceType) -> &'static str {
    match t {
        ServiceType::Keyed => "Keyed",
        ServiceType::Unkeyed => "Unkeyed",
        ServiceType::Singleton => "Singleton",
    }
}

fn service_json(s: &Service) -> Value {
    json!({
        "name": s.name,
        "methods": s.methods.keys().collect::<Vec<_>>(),
        "instance_type": instance_type(s.instance_type),
        "endpoint_id": s.endpoint_id,
        "revision": s.revision,
        "public": s.public,
    })
}

fn method_json(s: &Service, m: &schema::Method) -> Value {
    let mut value = json!({
        "service_name": s.name,
        "method_name": m.name,
        "input_type": m.input.full_name(),
        "output_type": m.output.full_name(),
    });
    if let Some(field) = m.key_field {
        value["key_field"] = json!(field);
    }
    value
}

fn endpoint_json(schemas: &Schemas, e: &schema::Endpoint) -> Value {
    let services: Vec<Value> = e
        .services
        .iter()
        .filter_map(|name| schemas.services.get(name))
        .filter(|s| s.endpoint_id == e.id)
        .map(|s| json!({ "name": s.name, "revision": s.revision }))
        .collect();
    json!({
        "id": e.id,
        "uri": e.uri,
        "protocol_type": match e.protocol_mode {
            schema::ProtocolMode::BidiStream => "BidiStream",
            schema::ProtocolMode::RequestResponse => "RequestResponse",
        },
        // Write-only: the values may be credentials.
        "additional_headers": e
            .additional_headers
            .keys()
            .map(|name| (name.clone(), json!("***")))
            .collect::<serde_json::Map<_, _>>(),
        "services": services,
    })
}

fn list_endpoints(schemas: &Schemas) -> Value {
    let endpoints: Vec<Value> = schemas
        .endpoints
        .values()
        .map(|e| endpoint_json(schemas, e))
        .collect();
    json!({ "endpoints": endpoints })
}

fn health(node: &NodeState) -> http::Response<Body> {
    let ready = node.ready_cores.load(Ordering::SeqCst);
    if node.shutdown.is_triggered() {
        error(StatusCode::SERVICE_UNAVAILABLE, "META0010", "shutting down")
    } else if ready < node.cores {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "META0010",
            &format!("{ready} of {} cores serving", node.cores),
        )
    } else {
        json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "cores": node.cores }),
        )
    }
}

/// Prometheus text exposition of the node's counters.
/// The cores' invoker and partition figures, summed over cores (the longest slot wait: the maximum).
fn core_gauges(node: &NodeState, text: &mut String) {
    use crate::node::CoreGauges;
    use std::sync::atomic::AtomicU64;
    let sum = |field: fn(&CoreGauges) -> &AtomicU64| -> u64 {
        node.gauges
            .iter()
            .map(|g| field(g).load(Ordering::Relaxed))
            .sum()
    };
    let longest_wait_ms = node
        .gauges
        .iter()
        .map(|g| g.longest_slot_wait_ms.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let series: [(&str, &str, &str, String); 8] = [
        (
            "restate_invoker_attempts_running",
            "gauge",
            "Attempts holding an invoker slot.",
            sum(|g| &g.attempts_running).to_string(),
        ),
        (
            "restate_invoker_attempts_waiting_for_slot",
            "gauge",
            "Attempts waiting for an invoker slot (worker.invoker.concurrency_limit per core).",
            sum(|g| &g.attempts_waiting_for_slot).to_string(),
        ),
        (
            "restate_invoker_longest_slot_wait_seconds",
            "gauge",
            "How long the longest current wait for an invoker slot has lasted.",
            format!("{:.3}", longest_wait_ms as f64 / 1000.0),
        ),
        (
            "restate_invoker_preemptions_total",
            "counter",
            "Idle attempts told to suspend because others waited for a slot.",
            sum(|g| &g.preemptions).to_string(),
        ),
        (
            "restate_invocations",
            "gauge",
            "Invocations running or suspended.",
            sum(|g| &g.invocations).to_string(),
        ),
        (
            "restate_invocations_suspended",
            "gauge",
            "Invocations suspended.",
            sum(|g| &g.suspended).to_string(),
        ),
        (
            "restate_inbox_queued",
            "gauge",
            "Invocations waiting in per-key inboxes.",
            sum(|g| &g.inbox_queued).to_string(),
        ),
        (
            "restate_outbox_backlog",
            "gauge",
            "Outbox messages waiting to be shipped.",
            sum(|g| &g.outbox_backlog).to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    // Per core: how fresh unkeyed invocations are spread (worker.ingress_grpc.local_placement_slack).
    let name = "restate_core_invocations_driven";
    text.push_str(&format!(
        "# HELP {name} Invocations whose attempts the core's invoker drives now (its load, by which \
         unkeyed invocations are placed).\n# TYPE {name} gauge\n"
    ));
    for (core, gauges) in node.gauges.iter().enumerate() {
        let value = gauges.invocations_driven.load(Ordering::Relaxed);
        text.push_str(&format!("{name}{{core=\"{core}\"}} {value}\n"));
    }
}

/// The storage thread's group commits: size and write latency, operations per table; and the timers
/// it holds.
fn storage_histograms(stats: &crate::storage::Stats, text: &mut String) {
    use crate::metrics::header;
    let histograms = [
        (
            "restate_storage_batch_operations",
            "Put and delete operations per group commit.",
            &stats.batch_ops,
        ),
        (
            "restate_storage_batch_bytes",
            "Bytes of each group commit's RocksDB write batch (keys, values, operation headers).",
            &stats.batch_bytes,
        ),
        (
            "restate_storage_write_duration_seconds",
            "RocksDB write of one group commit (WAL append and memtables; no fsync).",
            &stats.write_seconds,
        ),
        (
            "restate_storage_wal_sync_duration_seconds",
            "One fsync of the WAL (sync_writes), which makes every group commit applied before it durable.",
            &stats.sync_seconds,
        ),
    ];
    for (name, help, histogram) in histograms {
        header(text, name, "histogram", help);
        histogram.snapshot().render(text, name, "");
    }
    let name = "restate_storage_table_operations_total";
    header(
        text,
        name,
        "counter",
        "Operations written per table and kind (put, delete, delete_range).",
    );
    for table in crate::storage::Table::ALL {
        for (kind, op) in crate::storage::OP_KINDS.iter().enumerate() {
            let value = stats.table_ops[table.index()][kind].get();
            text.push_str(&format!(
                "{name}{{table=\"{}\",op=\"{op}\"}} {value}\n",
                table.name()
            ));
        }
    }
    header(
        text,
        "restate_timers_pending",
        "gauge",
        "Durable timers not fired yet (sleeps and delayed calls).",
    );
    text.push_str(&format!("restate_timers_pending {}\n", stats.timers.get()));
}

/// `GET /services/{name}/descriptors`: a `FileDescriptorSet` (binary) with the file declaring the service
/// and every file it imports, dependencies first, for `grpcurl -protoset` and other tools without
/// reflection.
fn descriptors(schemas: &Schemas, name: &str) -> Result<http::Response<Body>> {
    let service = find_service(schemas, name)?;
    let endpoint = schemas.endpoints.get(&service.endpoint_id).ok_or_else(|| {
        ApiError::not_found(format!("endpoint {} not found", service.endpoint_id))
    })?;
    let pool = &endpoint.pool;
    let file = pool
        .get_service_by_name(&service.name)
        .map(|s| s.parent_file())
        .ok_or_else(|| ApiError::not_found(format!("service {name} has no descriptor")))?;
    let mut needed = std::collections::HashSet::new();
    let mut stack = vec![file];
    while let Some(next) = stack.pop() {
        if needed.insert(next.name().to_owned()) {
            stack.extend(next.dependencies());
        }
    }
    // The pool keeps its files in dependency order; FileDescriptorSet is `repeated file = 1`.
    let mut set = Vec::new();
    for file in pool.files().filter(|f| needed.contains(f.name())) {
        prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut set);
    }
    Ok(http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(full(set))
        .expect("valid response"))
}

fn metrics(node: &NodeState) -> http::Response<Body> {
    let storage = node.storage.stats().snapshot();
    let http = &node.http_counters;
    let counters: [(&str, &str, u64); 9] = [
        (
            "restate_storage_write_requests_total",
            "Write requests acknowledged by the storage thread.",
            storage.write_requests,
        ),
        (
            "restate_storage_write_batches_total",
            "Group commits (RocksDB writes) of the storage thread.",
            storage.write_batches,
        ),
        (
            "restate_storage_wal_syncs_total",
            "WAL fsyncs (sync_writes); each makes every group commit applied before it durable.",
            storage.wal_syncs,
        ),
        (
            "restate_storage_write_ops_total",
            "Put and delete operations written.",
            storage.write_ops,
        ),
        (
            "restate_storage_reads_total",
            "Point reads and scans served by the storage thread.",
            storage.reads,
        ),
        (
            "restate_http_connections_accepted_total",
            "Connections accepted on all ports and cores.",
            http.connections_accepted.load(Ordering::Relaxed),
        ),
        (
            "restate_http_connections_refused_total",
            "Connections closed because their port (or a core) was at its connection limit.",
            http.connections_refused.load(Ordering::Relaxed),
        ),
        (
            "restate_http_connection_errors_total",
            "Connections that ended with a protocol or IO error (not client resets or closes).",
            http.connection_errors.load(Ordering::Relaxed),
        ),
        (
            "restate_http_header_timeouts_total",
            "Connections closed because a request head was not complete in runtime.http_header_read_timeout.",
            http.header_timeouts.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in counters {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP restate_cores Executors (one per core).\n# TYPE restate_cores gauge\nrestate_cores {}\n",
        node.cores
    ));
    text.push_str(
        "# HELP restate_http_open_connections Connections open on a port, all cores.\n\
         # TYPE restate_http_open_connections gauge\n",
    );
    let limits = &node.port_limits;
    for (port, limit) in [
        ("ingress", &limits.ingress),
        ("meta", &limits.meta),
        ("storage", &limits.storage),
    ] {
        text.push_str(&format!(
            "restate_http_open_connections{{port=\"{port}\"}} {}\n",
            limit.open()
        ));
    }
    core_gauges(node, &mut text);
    node.core_metrics.render(&mut text);
    storage_histograms(node.storage.stats(), &mut text);
    node.ingress_metrics.render(&mut text);
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(full(text))
        .expect("valid response")
}
