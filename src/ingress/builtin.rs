//! The ingress's built-in gRPC services (shared/docs/protocol.md §0.3, §4.3): server reflection (v1
//! and v1alpha) of the registered services plus the built-ins, so `grpcurl` and `ghz` work without
//! protos, and `grpc.health.v1.Health` (Check and Watch). Check is unary and answers Connect (JSON and
//! proto) too; reflection and Watch stream, so they are gRPC only and a Connect request to them gets 415.
//! Reflection reads the registrations when a stream opens, so it follows them live.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::select;
use futures::{FutureExt, SinkExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::{Frame, Incoming};
use prost::Message;
use prost_reflect::DescriptorPool;

use super::codec::{json_request, unframe};
use super::{read_body, respond, CallError, Context, Protocol};
use crate::grpc::Code;
use crate::http::{Body, BoxError};
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::reflection::{self, Answer, ListServiceResponse, Query, ServiceResponse};
use crate::schema::Schemas;

/// `grpc.health.v1.Health/Check`.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `grpc.health.v1.Health/Watch`.
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// How often a Watch stream looks for a change of its service's registration (shutdown wakes it at
/// once).
const WATCH_POLL: Duration = Duration::from_secs(1);

/// True for the paths of the built-in gRPC services (not `dev.restate.Ingress`, which Connect calls too).
pub fn handles(path: &str) -> bool {
    reflection::handles(path) || path.starts_with("/grpc.health.v1.Health/")
}

/// Serves a request to a built-in gRPC service.
pub(super) async fn serve(
    ctx: &Context,
    protocol: Protocol,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, CallError> {
    let path = request.uri().path().to_owned();
    // Check is unary, so Connect calls it like any other method; reflection and Watch stream.
    if protocol != Protocol::Grpc && path != HEALTH_CHECK {
        return Ok(crate::http::json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &serde_json::json!({
                "code": "unknown",
                "message": format!("{path} is served over gRPC only (content-type application/grpc)"),
            }),
        ));
    }
    if reflection::handles(&path) {
        let source = Registered {
            schemas: ctx.schemas.get(),
        };
        return Ok(reflection::serve(
            source,
            ctx.config.max_message_size,
            request,
        ));
    }
    if path != HEALTH_CHECK && path != HEALTH_WATCH {
        return Err(CallError::new(
            Code::Unimplemented,
            format!("method {path} is not implemented"),
        ));
    }
    let body = read_body(ctx, protocol, request).await?;
    let body = match protocol {
        Protocol::Grpc => unframe(body)?,
        Protocol::ConnectProto => body,
        Protocol::ConnectJson => json_request(&health_message("HealthCheckRequest"), &body)?,
    };
    let service = HealthCheckRequest::decode(body)
        .map_err(|e| CallError::new(Code::InvalidArgument, format!("undecodable request: {e}")))?
        .service;
    if path == HEALTH_WATCH {
        return Ok(watch(ctx, service));
    }
    match status(&ctx.schemas.get(), &ctx.shutdown, &service) {
        ServingStatus::ServiceUnknown => Err(CallError::new(
            Code::NotFound,
            format!("service {service} not found"),
        )),
        status => respond(
            protocol,
            &health_message("HealthCheckResponse"),
            health_response(status),
        ),
    }
}

/// A message of `grpc.health.v1`, for Connect JSON.
fn health_message(name: &str) -> prost_reflect::MessageDescriptor {
    builtin_pool()
        .get_message_by_name(&format!("grpc.health.v1.{name}"))
        .expect("the built-in descriptors have grpc.health.v1")
}

/// The descriptors of `dev.restate.Ingress`, health and reflection.
fn builtin_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::INGRESS_BUILTIN_DESCRIPTOR_SET)
            .expect("the embedded built-in descriptors decode")
    })
}

/// The health of `service`: the server itself (empty name; NOT_SERVING once shutdown started), a
/// built-in, a registered service (SERVING if public), or SERVICE_UNKNOWN.
fn status(schemas: &Schemas, shutdown: &crate::shutdown::Shutdown, service: &str) -> ServingStatus {
    if shutdown.is_triggered() {
        return ServingStatus::NotServing;
    }
    if service.is_empty() || builtin_pool().get_service_by_name(service).is_some() {
        return ServingStatus::Serving;
    }
    match schemas.services.get(service) {
        Some(s) if s.public => ServingStatus::Serving,
        Some(_) => ServingStatus::NotServing,
        None => ServingStatus::ServiceUnknown,
    }
}

fn health_response(status: ServingStatus) -> Bytes {
    Bytes::from(
        HealthCheckResponse {
            status: status as i32,
        }
        .encode_to_vec(),
    )
}

/// `Watch`: the current status at once, then each change; after NOT_SERVING for shutdown the stream
/// ends with OK. A task on this core watches, and stops when the caller leaves.
fn watch(ctx: &Context, service: String) -> http::Response<Body> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let schemas = ctx.schemas.clone();
    let shutdown = ctx.shutdown.clone();
    glommio::spawn_local(async move {
        let mut last = None;
        while !tx.is_closed() {
            let now = status(&schemas.get(), &shutdown, &service);
            if last != Some(now) {
                last = Some(now);
                if tx
                    .send(Ok(Frame::data(framed(health_response(now)))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if shutdown.is_triggered() {
                let mut trailers = HeaderMap::new();
                trailers.insert(crate::grpc::GRPC_STATUS, HeaderValue::from_static("0"));
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                return;
            }
            let tick = glommio::timer::sleep(WATCH_POLL).boxed_local();
            select(tick, shutdown.signal()).await;
        }
    })
    .detach();
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(http_body_util::StreamBody::new(rx)))
        .expect("valid response")
}

fn framed(message: Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(&message);
    out.freeze()
}

/// Reflection over the built-ins and every registered endpoint's descriptors, as registered when the
/// stream opened. Lists the built-ins and the public registered services.
pub struct Registered {
    pub schemas: Arc<Schemas>,
}

impl Registered {
    /// The pools to search for a symbol: the built-ins, then the endpoint owning the symbol's service
    /// (when it names one or one of its methods), then every endpoint.
    fn pools(&self, symbol: Option<&str>) -> Vec<&DescriptorPool> {
        let owner = symbol.and_then(|symbol| {
            let symbol = symbol.trim_start_matches('.');
            let service = self.schemas.services.get(symbol).or_else(|| {
                let (parent, _) = symbol.rsplit_once('.')?;
                self.schemas.services.get(parent)
            })?;
            self.schemas.endpoints.get(&service.endpoint_id)
        });
        std::iter::once(builtin_pool())
            .chain(owner.map(|e| &e.pool))
            .chain(self.schemas.endpoints.values().map(|e| &e.pool))
            .collect()
    }

    /// The registered services' and built-ins' names, sorted.
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = builtin_pool()
            .services()
            .map(|s| s.full_name().to_owned())
            .chain(
                self.schemas
                    .services
                    .values()
                    .filter(|s| s.public)
                    .map(|s| s.name.clone()),
            )
            .collect();
        names.sort();
        names
    }
}

impl reflection::Source for Registered {
    fn answer(&self, request: &reflection::Request) -> reflection::Response {
        if let Some(Query::ListServices(_)) = &request.query {
            let service = self
                .service_names()
                .into_iter()
                .map(|name| ServiceResponse { name })
                .collect();
            return reflection::Response {
                valid_host: request.host.clone(),
                original_request: Some(request.clone()),
                answer: Some(Answer::ListServicesResponse(ListServiceResponse {
                    service,
                })),
            };
        }
        let symbol = match &request.query {
            Some(Query::FileContainingSymbol(symbol)) => Some(symbol.as_str()),
            _ => None,
        };
        let mut last = None;
        for pool in self.pools(symbol) {
            let response = reflection::answer(pool, request);
            if !matches!(response.answer, Some(Answer::ErrorResponse(_))) {
                return response;
            }
            last = Some(response);
        }
        last.expect("the built-in pool is always searched")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reflection::Source;

    fn ask(query: Query) -> Answer {
        let source = Registered {
            schemas: Arc::new(Schemas::default()),
        };
        source
            .answer(&reflection::Request {
                host: String::new(),
                query: Some(query),
            })
            .answer
            .unwrap()
    }

    #[test]
    fn builtins_are_listed_and_described() {
        let Answer::ListServicesResponse(list) = ask(Query::ListServices(String::new())) else {
            panic!("not a list")
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev.restate.Ingress",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
        );
        let found = ask(Query::FileContainingSymbol(
            "grpc.health.v1.Health.Check".into(),
        ));
        assert!(matches!(found, Answer::FileDescriptorResponse(_)));
        let missing = ask(Query::FileContainingSymbol("no.Such".into()));
        assert!(
            matches!(missing, Answer::ErrorResponse(e) if e.error_code == Code::NotFound as i32)
        );
    }

    #[test]
    fn health_follows_shutdown() {
        let shutdown = crate::shutdown::Shutdown::new();
        let schemas = Schemas::default();
        assert_eq!(status(&schemas, &shutdown, ""), ServingStatus::Serving);
        assert_eq!(
            status(&schemas, &shutdown, "grpc.health.v1.Health"),
            ServingStatus::Serving
        );
        assert_eq!(
            status(&schemas, &shutdown, "nope"),
            ServingStatus::ServiceUnknown
        );
        shutdown.trigger();
        assert_eq!(status(&schemas, &shutdown, ""), ServingStatus::NotServing);
    }
}
