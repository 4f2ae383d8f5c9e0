//! What an invocation is before it runs: the request to start one, and how it ends.

use bytes::Bytes;
use futures::channel::oneshot;

use super::rows::{InvocationRequest, ResponseSink};
use super::{InvocationId, ServiceId};
use crate::grpc::Code;

/// Tells the sender of an invocation (or of an outbox message) that it is durably accepted, or why it
/// was refused (an inbox past its bound).
pub type Ack = oneshot::Sender<Result<(), Failure>>;

/// The result an invocation ends with: the output bytes, or a failure (gRPC code and message).
pub type Outcome = Result<Bytes, Failure>;

/// A failed invocation, as its caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// gRPC status code (1..=16; anything else is reported as UNKNOWN).
    pub code: u32,
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code: code as u32,
            message: message.into(),
        }
    }
}

/// A new invocation, as the ingress (or another invocation) asks for it.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub id: InvocationId,
    pub service: ServiceId,
    pub method: String,
    pub argument: Bytes,
    /// Keyed or singleton: one invocation per key at a time, through the inbox.
    pub keyed: bool,
    /// A calling invocation's entry that gets the result.
    pub response_sink: Option<ResponseSink>,
    /// Set: the result is kept for `idempotency_retention` and returned to repeated calls.
    pub idempotency_key: Option<String>,
}

impl NewInvocation {
    pub(crate) fn to_request(&self) -> InvocationRequest {
        InvocationRequest {
            invocation_id: Bytes::copy_from_slice(self.id.as_bytes()),
            service: self.service.service.clone(),
            key: self.service.key.clone(),
            method: self.method.clone(),
            argument: self.argument.clone(),
            keyed: self.keyed,
            response_sink: self.response_sink.clone(),
        }
    }

    pub(crate) fn from_request(request: InvocationRequest) -> Option<NewInvocation> {
        Some(NewInvocation {
            id: InvocationId::from_slice(&request.invocation_id)?,
            service: ServiceId {
                service: request.service,
                key: request.key,
            },
            method: request.method,
            argument: request.argument,
            keyed: request.keyed,
            response_sink: request.response_sink,
            idempotency_key: None,
        })
    }
}
