//! The ingress server (:9090): gRPC and Connect unary calls to registered services.
//!
//! A call is decoded (gRPC frame, Connect JSON through the service's descriptors, or Connect proto),
//! its key extracted with the service's key rules, and an invocation sent to the core owning its
//! partition; the caller gets the response once the invocation's output is durable.
//!
//! An unkeyed call gets a fresh key, chosen so that its partition is one of this core's unless this
//! core drives more invocations than another (picked at random) by more than
//! `worker.ingress_grpc.local_placement_slack`: most calls then run where their connection is, with no
//! hop to another core and back, while a core that many connections hash to sheds work to the others.

use std::cell::Cell;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::FutureExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage};

pub mod codec;

use crate::config;
use crate::grpc::{connect_error, trailers_only, Code, GRPC_STATUS};
use crate::http::body::BodyError;
use crate::http::server::Handler;
use crate::http::{full, Body, BoxError};
use crate::partition::processor::{Ack, Command, Failure, NewInvocation, Outcome, Processor};
use crate::partition::router::Router;
use crate::partition::{InvocationId, ServiceId};
use crate::schema::registry::LocalSchemas;
use crate::schema::ServiceType;

pub mod builtin;
pub mod cors;
pub mod headers;
pub mod metrics;

/// The protocol a request speaks, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc` or `application/grpc+proto`.
    Grpc,
    /// Connect unary with a JSON body.
    ConnectJson,
    /// Connect unary with a protobuf body.
    ConnectProto,
}

impl Protocol {
    /// Classifies a content type (parameters such as `charset` are ignored).
    pub fn from_content_type(content_type: Option<&str>) -> Option<Protocol> {
        let essence = content_type?.split(';').next()?.trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        if is("application/grpc") || is("application/grpc+proto") {
            Some(Protocol::Grpc)
        } else if is("application/json") {
            Some(Protocol::ConnectJson)
        } else if is("application/proto") || is("application/protobuf") {
            Some(Protocol::ConnectProto)
        } else {
            None
        }
    }
}

/// What the ingress handlers of a core need.
#[derive(Clone)]
pub struct Context {
    pub config: config::IngressGrpc,
    pub schemas: LocalSchemas,
    pub router: Router,
    /// This core's processor (calls for partitions it owns skip the queue).
    pub local: Processor,
    pub core: usize,
    /// Health answers NOT_SERVING once shutdown has started.
    pub shutdown: crate::shutdown::Shutdown,
    /// Requests by protocol and code, latencies (node-wide, for /metrics).
    pub metrics: std::sync::Arc<metrics::IngressMetrics>,
    /// Every core's gauges (index = core): their loads place fresh unkeyed invocations.
    pub gauges: std::sync::Arc<Vec<std::sync::Arc<crate::node::CoreGauges>>>,
}

/// An error answered in the caller's protocol: status code and message.
#[derive(Debug)]
pub struct CallError(pub Code, pub String);

impl CallError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        CallError(code, message.into())
    }
}

/// Builds the ingress handler of one core.
///
/// A request's head is judged before any future is built: CORS preflight, content type, built-in
/// services (which take no in-flight slot), a call's method, path, headers, service and method
/// (so a malformed call gets its own error also from a full core), then the core's in-flight limit.
/// What is left to wait for (the body, the invocation's outcome) runs in one boxed future per
/// request, kept small: under glibc's per-thread cache (about 1 KB), so it costs no trip to the
/// shared heap, and with no second copy of the request head. Rarer paths (built-in services, one-way
/// sends) box their own.
pub fn handler(context: Context) -> Handler {
    let context = Rc::new(context);
    let in_flight = Rc::new(Cell::new(0usize));
    Rc::new(move |request| {
        let ctx = &context;
        let origins = &ctx.config.cors_allowed_origins;
        if let Some(answer) = cors::preflight(origins, &request) {
            return std::future::ready(answer).boxed_local();
        }
        let origin = request.headers().get(http::header::ORIGIN).cloned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let Some(protocol) = Protocol::from_content_type(content_type) else {
            let mut answer = crate::http::json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &serde_json::json!({
                    "code": "unknown",
                    "message": format!(
                        "unsupported content-type {:?}: use application/grpc, application/json or application/proto",
                        content_type.unwrap_or_default()
                    ),
                }),
            );
            if let Some(origin) = origin {
                cors::decorate(origins, &origin, &mut answer);
            }
            return std::future::ready(answer).boxed_local();
        };
        let answer = Answer {
            ctx: ctx.clone(),
            origin,
            protocol,
            started: std::time::Instant::now(),
        };
        // Built-in services (health, reflection) take no slot: a core busy with calls still
        // answers its health checks.
        if builtin::handles(request.uri().path()) {
            let ctx = ctx.clone();
            let work = async move { builtin::serve(&ctx, protocol, request).await };
            return answer.after(None, work).boxed_local();
        }
        // A malformed call gets its own error, also from a full core: judging it takes no slot.
        let prepared = match prepare(ctx, protocol, request) {
            Ok(prepared) => prepared,
            Err(e) => return std::future::ready(answer.finish(Err(e))).boxed_local(),
        };
        let Some(slot) = InFlight::enter(&in_flight, ctx.config.concurrency_limit) else {
            let refused = CallError::new(
                Code::ResourceExhausted,
                "too many calls in flight on this core (worker.ingress_grpc.concurrency_limit)",
            );
            return std::future::ready(answer.finish(Err(refused))).boxed_local();
        };
        match prepared {
            Prepared::Call(call) => answer
                .after(Some(slot), call.run(ctx.clone()))
                .boxed_local(),
            Prepared::OneWay(method, request) => {
                let ctx = ctx.clone();
                let work = async move { one_way(&ctx, protocol, &method, request).await };
                answer.after(Some(slot), work).boxed_local()
            }
        }
    })
}

/// One of a core's `concurrency_limit` places for calls in flight, given back when dropped: also
/// when the caller goes away first (hyper drops the request's future on RST_STREAM or a closed
/// connection).
struct InFlight(Rc<Cell<usize>>);

impl InFlight {
    fn enter(in_flight: &Rc<Cell<usize>>, limit: usize) -> Option<InFlight> {
        if in_flight.get() >= limit {
            return None;
        }
        in_flight.set(in_flight.get() + 1);
        Some(InFlight(in_flight.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// How a request in a known protocol is answered: errors in that protocol, counted in the metrics,
/// with CORS headers for an allowed origin.
struct Answer {
    ctx: Rc<Context>,
    origin: Option<HeaderValue>,
    protocol: Protocol,
    started: std::time::Instant,
}

impl Answer {
    fn finish(self, result: Result<http::Response<Body>, CallError>) -> http::Response<Body> {
        let mut response = result.unwrap_or_else(|e| error_response(self.protocol, e));
        // Error answers carry their code as an extension (see error_response).
        let code = response
            .extensions()
            .get::<Code>()
            .copied()
            .unwrap_or(Code::Ok);
        self.ctx
            .metrics
            .record(self.protocol, code, self.started.elapsed());
        if let Some(origin) = &self.origin {
            cors::decorate(&self.ctx.config.cors_allowed_origins, origin, &mut response);
        }
        response
    }

    /// Answers what `work` gives, holding `slot` (if it takes one) until then. (A combinator, not
    /// an `async fn`, which would hold `work` twice: as its argument and as the local it awaits.)
    fn after(
        self,
        slot: Option<InFlight>,
        work: impl std::future::Future<Output = Result<http::Response<Body>, CallError>>,
    ) -> impl std::future::Future<Output = http::Response<Body>> {
        work.map(move |result| {
            drop(slot);
            self.finish(result)
        })
    }
}

/// What a request's head asks for, judged before its body is read.
enum Prepared {
    /// A call of a registered service's method.
    Call(Call),
    /// `dev.restate.Ingress/{method}`: a one-way send.
    OneWay(String, http::Request<Incoming>),
}

/// A call whose head is judged: what is left is its body and the invocation's outcome.
struct Call {
    protocol: Protocol,
    body: crate::http::body::StallTimeout<Incoming>,
    service: std::sync::Arc<crate::schema::Service>,
    method: String,
    idempotency_key: Option<String>,
    timeout: Option<std::time::Duration>,
}

/// Judges a request's head: method, path, deadline, service and method.
fn prepare(
    ctx: &Context,
    protocol: Protocol,
    request: http::Request<Incoming>,
) -> Result<Prepared, CallError> {
    if request.method() != Method::POST {
        return Err(CallError::new(
            Code::Unimplemented,
            format!("{} is not supported; use POST", request.method()),
        ));
    }
    // gRPC tools expect UNIMPLEMENTED for an unknown service or method; Connect keeps NOT_FOUND.
    let unknown = match protocol {
        Protocol::Grpc => Code::Unimplemented,
        Protocol::ConnectJson | Protocol::ConnectProto => Code::NotFound,
    };
    let path = request.uri().path();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (service_name, method_name) = match (segments.next(), segments.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => (s, m),
        _ => {
            return Err(CallError::new(
                unknown,
                format!("path {path} is not /{{service}}/{{method}}"),
            ))
        }
    };
    let timeout = headers::request_timeout(request.headers(), ctx.config.max_request_timeout)
        .map_err(|e| CallError::new(Code::InvalidArgument, e.to_string()))?;
    if service_name == "dev.restate.Ingress" {
        return Ok(Prepared::OneWay(method_name.to_owned(), request));
    }
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let schemas = ctx.schemas.get();
    let service = schemas
        .services
        .get(service_name)
        .ok_or_else(|| CallError::new(unknown, format!("service {service_name} not found")))?;
    if !service.methods.contains_key(method_name) {
        return Err(CallError::new(
            unknown,
            format!("method {service_name}/{method_name} not found"),
        ));
    }
    if !service.public {
        return Err(CallError::new(
            Code::PermissionDenied,
            format!("service {service_name} is not public"),
        ));
    }
    Ok(Prepared::Call(Call {
        protocol,
        service: service.clone(),
        method: method_name.to_owned(),
        idempotency_key,
        timeout,
        body: crate::http::body::guarded(request),
    }))
}

impl Call {
    /// Reads the body, starts the invocation and answers its outcome.
    /// (Fields are used in place: each one moved to a local would take room of its own in the
    /// future.)
    async fn run(self, ctx: Rc<Context>) -> Result<http::Response<Body>, CallError> {
        let protocol = self.protocol;
        let service = &self.service;
        let method = service
            .methods
            .get(&self.method)
            .expect("judged by prepare");
        let body = read_guarded(&ctx, protocol, self.body).await?;
        let argument = match protocol {
            Protocol::Grpc => codec::proto_request(&method.input, codec::unframe(body)?)?,
            Protocol::ConnectProto => codec::proto_request(&method.input, body)?,
            Protocol::ConnectJson => codec::json_request(&method.input, &body)?,
        };
        let invocation = new_invocation(&ctx, service, method, argument, self.idempotency_key)?;
        let sid = sid(&invocation);
        let id = invocation.id;
        let (reply, outcome) = oneshot::channel();
        submit(&ctx, invocation, Some(reply), None).await?;
        let answer = await_outcome(&ctx, id, outcome, self.timeout, protocol, method).await;
        Ok(with_invocation_id(
            answer.unwrap_or_else(|e| error_response(protocol, e)),
            sid,
        ))
    }
}

/// The header that carries a call's invocation id (its sid, as `DELETE /invocations` takes it).
pub const INVOCATION_ID_HEADER: &str = "x-restate-invocation-id";

/// Adds the invocation id to the answer of a call, failed or not, so it can be looked up and cancelled.
fn with_invocation_id(mut response: http::Response<Body>, sid: String) -> http::Response<Body> {
    const NAME: http::HeaderName = http::HeaderName::from_static(INVOCATION_ID_HEADER);
    if let Ok(mut value) = HeaderValue::from_maybe_shared(Bytes::from(sid)) {
        // Unique to the call: HTTP/2 sends it as a literal never indexed. Indexed, every response
        // evicted a reusable entry from the connection's HPACK table and first compared its value
        // with each earlier id still there.
        value.set_sensitive(true);
        response.headers_mut().insert(NAME, value);
    }
    response
}

/// A call's error in the caller's protocol.
fn error_response(protocol: Protocol, e: CallError) -> http::Response<Body> {
    let mut response = match protocol {
        Protocol::Grpc => trailers_only(e.0, &e.1),
        Protocol::ConnectJson | Protocol::ConnectProto => connect_error(e.0, &e.1),
    };
    response.extensions_mut().insert(e.0);
    response
}

/// Waits (up to the caller's timeout) for an invocation's outcome and answers it. Past the timeout
/// the caller is told the invocation carries on, once its start is durable (its rows may still be
/// held in memory: see [`crate::partition::transient`]).
async fn await_outcome(
    ctx: &Context,
    id: crate::partition::InvocationId,
    outcome: oneshot::Receiver<Outcome>,
    timeout: Option<std::time::Duration>,
    protocol: Protocol,
    method: &crate::schema::Method,
) -> Result<http::Response<Body>, CallError> {
    let outcome: Outcome = match timeout {
        Some(limit) => match select(outcome, glommio::timer::sleep(limit).boxed_local()).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => {
                // Boxed: rare, and no room for it in every call's future.
                persist(ctx, id).boxed_local().await;
                return Err(CallError::new(
                    Code::DeadlineExceeded,
                    format!("no response within {limit:?}; the invocation carries on"),
                ));
            }
        },
        None => outcome.await,
    }
    .map_err(|_| CallError::new(Code::Unavailable, "the invocation's core is shutting down"))?;
    match outcome {
        Ok(output) => respond(protocol, &method.output, output),
        Err(Failure { code, message }) => Err(CallError::new(code_of(code), message)),
    }
}

/// Asks `id`'s core to write its held rows and waits until they are durable. If the core is gone
/// (shutting down) the caller is answered all the same: a graceful shutdown writes them too.
async fn persist(ctx: &Context, id: crate::partition::InvocationId) {
    let (reply, persisted) = oneshot::channel();
    let command = Command::Persist { id, reply };
    let partition = id.partition(ctx.router.partitions());
    if ctx.router.owner(partition) == ctx.core {
        ctx.local.handle(command);
    } else if ctx.router.send(partition, command).await.is_err() {
        return;
    }
    let _ = persisted.await;
}

/// The request body, at most `max_message_size` (plus the gRPC frame header). A gRPC frame declaring
/// more is refused as soon as its 5-byte header arrives; a body that stalls fails after
/// `runtime.http_body_stall_timeout`.
async fn read_body(
    ctx: &Context,
    protocol: Protocol,
    request: http::Request<Incoming>,
) -> Result<Bytes, CallError> {
    read_guarded(ctx, protocol, crate::http::body::guarded(request)).await
}

/// [`read_body`] of a body already taken from its request.
async fn read_guarded(
    ctx: &Context,
    protocol: Protocol,
    mut body: crate::http::body::StallTimeout<Incoming>,
) -> Result<Bytes, CallError> {
    let limit = ctx.config.max_message_size;
    let framing = if protocol == Protocol::Grpc { 5 } else { 0 };
    let too_large = |size: String| {
        CallError::new(
            Code::ResourceExhausted,
            format!(
                "message of {size} larger than worker.ingress_grpc.max_message_size ({limit} bytes)"
            ),
        )
    };
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(body_error)?.into_data() else {
            continue; // trailers
        };
        if buffer.len() + data.len() > limit + framing {
            return Err(too_large("more bytes".to_owned()));
        }
        buffer.extend_from_slice(&data);
        if framing > 0 && buffer.len() >= framing {
            let declared = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
            if declared as usize > limit {
                return Err(too_large(format!("{declared} bytes (gRPC frame header)")));
            }
        }
    }
    Ok(buffer.freeze())
}

/// The call error for a request body that could not be read.
fn body_error(e: BodyError) -> CallError {
    let code = match e {
        BodyError::Stalled(_) => Code::DeadlineExceeded,
        BodyError::Malformed(_) => Code::InvalidArgument,
        BodyError::Aborted(_) => Code::Cancelled,
    };
    CallError::new(code, format!("cannot read the request: {e}"))
}

/// The invocation for a call: key from the service's key rules (fresh for unkeyed services, placed
/// by [`unkeyed_key`]), id derived from the idempotency key when there is one (so repeated calls meet
/// the same invocation).
fn new_invocation(
    ctx: &Context,
    service: &crate::schema::Service,
    method: &crate::schema::Method,
    argument: Bytes,
    idempotency_key: Option<String>,
) -> Result<NewInvocation, CallError> {
    let key = service.extract_key(method, &argument).map_err(|e| {
        CallError::new(
            Code::InvalidArgument,
            format!("cannot extract the key: {e}"),
        )
    })?;
    // An absent key field would extract the empty key (§2.4); from a client it is a mistake, refused
    // here rather than running every such call on one shared instance.
    if service.instance_type == ServiceType::Keyed && key.as_ref().is_some_and(|k| k.is_empty()) {
        return Err(CallError::new(
            Code::InvalidArgument,
            format!(
                "{}/{} is keyed: the request must carry its key (field {}), and a non-default one",
                service.name,
                method.name,
                method.key_field.unwrap_or_default()
            ),
        ));
    }
    let keyed = key.is_some();
    debug_assert!(keyed || service.instance_type == ServiceType::Unkeyed);
    let seed: Vec<&[u8]> = idempotency_key
        .iter()
        .map(|k| k.as_bytes())
        .chain([service.name.as_bytes(), method.name.as_bytes()])
        .collect();
    let key = key.unwrap_or_else(|| match &idempotency_key {
        // The same idempotency key must land on the same instance, hence the same partition.
        Some(_) => InvocationId::derived(0, &seed).as_bytes()[8..].to_vec(),
        None => unkeyed_key(ctx, &service.name).to_vec(),
    });
    let target = ServiceId {
        service: service.name.clone(),
        key: key.into(),
    };
    let id = match &idempotency_key {
        Some(_) => InvocationId::derived(target.partition_key(), &seed),
        None => InvocationId::new(target.partition_key()),
    };
    Ok(NewInvocation {
        id,
        service: target,
        method: method.name.clone(),
        argument,
        keyed,
        response_sink: None,
        idempotency_key,
    })
}

/// A fresh key for an unkeyed invocation of `service`, in a partition of the core chosen by
/// [`placement`]: this one unless it is busier by more than `local_placement_slack`.
fn unkeyed_key(ctx: &Context, service: &str) -> [u8; 16] {
    use std::sync::atomic::Ordering::Relaxed;
    let unique = *uuid::Uuid::now_v7().as_bytes();
    let cores = ctx.gauges.len();
    if cores < 2 {
        return unique;
    }
    // The other candidate, from the UUID's random tail (not its timestamp).
    let other = (ctx.core + 1 + usize::from(unique[12]) % (cores - 1)) % cores;
    let load = |core: usize| ctx.gauges[core].invocations_driven.load(Relaxed);
    let core = placement(
        ctx.core,
        load(ctx.core),
        other,
        load(other),
        ctx.config.local_placement_slack,
    );
    let router = &ctx.router;
    crate::partition::unkeyed_key_where(service, unique, router.partitions(), |p| {
        router.owner(p) == core
    })
    .unwrap_or(unique)
}

/// The core a fresh unkeyed invocation runs on: `local` (no hop to another core and back) unless it
/// drives more than `slack` invocations beyond `other`.
fn placement(local: usize, local_load: u64, other: usize, other_load: u64, slack: u64) -> usize {
    if local_load <= other_load.saturating_add(slack) {
        local
    } else {
        other
    }
}

/// An invocation handed to this core's processor (ready), or being sent to another core's.
type Submitted<'a> = Either<
    std::future::Ready<Result<(), CallError>>,
    futures::future::LocalBoxFuture<'a, Result<(), CallError>>,
>;

/// Sends an invocation to the core owning its partition: this core's processor takes it at once;
/// another core's through the router, in a boxed future (the caller's future then need not make room
/// for the command and the send).
fn submit<'a>(
    ctx: &'a Context,
    invocation: NewInvocation,
    reply: Option<oneshot::Sender<Outcome>>,
    ack: Option<Ack>,
) -> Submitted<'a> {
    let partition = invocation.id.partition(ctx.router.partitions());
    let command = Command::Invoke {
        invocation,
        reply,
        ack,
    };
    if ctx.router.owner(partition) == ctx.core {
        ctx.local.handle(command);
        Either::Left(std::future::ready(Ok(())))
    } else {
        let sent = ctx.router.send(partition, command);
        Either::Right(
            async move {
                sent.await
                    .map_err(|e| CallError::new(Code::Unavailable, e.to_string()))
            }
            .boxed_local(),
        )
    }
}

/// The service invocation id token: `<service>-<base64 key>-<invocation id>`.
pub fn sid(invocation: &NewInvocation) -> String {
    use base64::Engine;
    let service = &invocation.service;
    let key_len = base64::encoded_len(service.key.len(), true).unwrap_or(0);
    // Built in place: this runs for every call.
    let mut sid =
        String::with_capacity(service.service.len() + key_len + 2 + 2 * InvocationId::LEN);
    sid.push_str(&service.service);
    sid.push('-');
    base64::engine::general_purpose::STANDARD.encode_string(&service.key, &mut sid);
    sid.push('-');
    invocation.id.push_hex(&mut sid);
    sid
}

/// The invocation id inside a sid (its last `-`-separated part).
pub fn parse_sid(sid: &str) -> Option<InvocationId> {
    InvocationId::from_hex(sid.rsplit('-').next()?)
}

/// `dev.restate.Ingress/Invoke`: enqueue an invocation durably and answer its sid without waiting.
async fn one_way(
    ctx: &Context,
    protocol: Protocol,
    method: &str,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, CallError> {
    use crate::proto::restate::{InvokeRequest, InvokeResponse};
    if method != "Invoke" {
        let unknown = match protocol {
            Protocol::Grpc => Code::Unimplemented,
            Protocol::ConnectJson | Protocol::ConnectProto => Code::NotFound,
        };
        return Err(CallError::new(
            unknown,
            format!("method dev.restate.Ingress/{method} not found"),
        ));
    }
    let body = read_body(ctx, protocol, request).await?;
    let schemas = ctx.schemas.get();
    let lookup = |service: &str, method: &str| {
        schemas
            .method(service, method)
            .map(|(s, m)| (s.clone(), m.clone()))
            .map_err(|e| CallError::new(Code::NotFound, e.to_string()))
    };
    let (service, method, argument) = match protocol {
        Protocol::ConnectJson => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Json {
                service: String,
                method: String,
                #[serde(default)]
                argument: serde_json::Value,
            }
            let json: Json = serde_json::from_slice(&body).map_err(|e| {
                CallError::new(Code::InvalidArgument, format!("invalid JSON request: {e}"))
            })?;
            let (service, method) = lookup(&json.service, &json.method)?;
            let argument = if json.argument.is_null() {
                DynamicMessage::new(method.input.clone())
            } else {
                DynamicMessage::deserialize_with_options(
                    method.input.clone(),
                    json.argument,
                    &DeserializeOptions::new(),
                )
                .map_err(|e| {
                    CallError::new(Code::InvalidArgument, format!("invalid argument: {e}"))
                })?
            };
            (service, method, Bytes::from(argument.encode_to_vec()))
        }
        Protocol::Grpc | Protocol::ConnectProto => {
            let bytes = if protocol == Protocol::Grpc {
                codec::unframe(body)?
            } else {
                body
            };
            let request = InvokeRequest::decode(bytes).map_err(|e| {
                CallError::new(Code::InvalidArgument, format!("undecodable request: {e}"))
            })?;
            let (service, method) = lookup(&request.service, &request.method)?;
            (service, method, Bytes::from(request.argument))
        }
    };
    if !service.public {
        return Err(CallError::new(
            Code::PermissionDenied,
            format!("service {} is not public", service.name),
        ));
    }
    let invocation = new_invocation(ctx, &service, &method, argument, None)?;
    let sid = sid(&invocation);
    let (ack, acked) = oneshot::channel();
    submit(ctx, invocation, None, Some(ack)).await?;
    acked
        .await
        .map_err(|_| CallError::new(Code::Unavailable, "the invocation's core is shutting down"))?
        .map_err(|Failure { code, message }| CallError::new(code_of(code), message))?;
    match protocol {
        Protocol::ConnectJson => Ok(crate::http::json_response(
            StatusCode::OK,
            &serde_json::json!({ "sid": sid }),
        )),
        Protocol::Grpc | Protocol::ConnectProto => respond_bytes(
            protocol,
            Bytes::from(InvokeResponse { sid }.encode_to_vec()),
        ),
    }
}

fn code_of(code: u32) -> Code {
    use Code::*;
    [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ]
    .get(code as usize)
    .copied()
    .filter(|c| *c != Ok)
    .unwrap_or(Unknown)
}

fn respond(
    protocol: Protocol,
    output: &prost_reflect::MessageDescriptor,
    bytes: Bytes,
) -> Result<http::Response<Body>, CallError> {
    match protocol {
        Protocol::Grpc | Protocol::ConnectProto => respond_bytes(protocol, bytes),
        Protocol::ConnectJson => Ok(http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(codec::json_response(output, bytes)?))
            .expect("valid response")),
    }
}

/// A protobuf response: gRPC-framed with trailers, or Connect proto.
fn respond_bytes(protocol: Protocol, bytes: Bytes) -> Result<http::Response<Body>, CallError> {
    match protocol {
        Protocol::Grpc => {
            let mut framed = BytesMut::with_capacity(5 + bytes.len());
            framed.put_u8(0);
            framed.put_u32(bytes.len() as u32);
            framed.put_slice(&bytes);
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
            let frames = futures::stream::iter([
                Ok::<_, BoxError>(hyper::body::Frame::data(framed.freeze())),
                Ok(hyper::body::Frame::trailers(trailers)),
            ]);
            Ok(http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(Body::new(http_body_util::StreamBody::new(frames)))
                .expect("valid response"))
        }
        Protocol::ConnectProto => Ok(http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/proto")
            .body(full(bytes))
            .expect("valid response")),
        Protocol::ConnectJson => unreachable!("JSON responses are written by respond()"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unkeyed_invocation_stays_on_its_core_unless_it_is_busier_by_more_than_the_slack() {
        assert_eq!(placement(0, 0, 1, 0, 16), 0, "idle: local");
        assert_eq!(placement(0, 16, 1, 0, 16), 0, "within the slack: local");
        assert_eq!(placement(0, 17, 1, 0, 16), 1, "beyond it: the other core");
        assert_eq!(placement(0, 40, 1, 30, 16), 0);
        assert_eq!(placement(0, 1, 1, 0, 0), 1, "slack 0: the less loaded core");
        assert_eq!(placement(0, 5, 1, 5, 0), 0, "ties stay local");
        assert_eq!(
            placement(3, 9, 1, 0, u64::MAX),
            3,
            "an unbounded slack: always local"
        );
    }

    #[test]
    fn content_types_select_the_protocol() {
        assert_eq!(
            Protocol::from_content_type(Some("application/grpc")),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            Protocol::from_content_type(Some("Application/JSON; charset=utf-8")),
            Some(Protocol::ConnectJson)
        );
        assert_eq!(
            Protocol::from_content_type(Some("application/proto")),
            Some(Protocol::ConnectProto)
        );
        assert_eq!(Protocol::from_content_type(Some("text/plain")), None);
        assert_eq!(Protocol::from_content_type(None), None);
    }

    #[test]
    fn status_codes_map_to_grpc_codes() {
        assert_eq!(code_of(99), Code::Unknown);
        assert_eq!(code_of(5), Code::NotFound);
    }
}
