//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, which share one message layout) over a
//! `prost_reflect::DescriptorPool`, so tools such as `grpcurl` can list and call services without the
//! protos. Any server can mount it: the storage API serves its own descriptors; the ingress can serve
//! the registered services' pool the same way.
//!
//! `ServerReflectionInfo` is a bidirectional stream: each request is answered as it arrives (the
//! response body reads the next request only when hyper polls it), and the stream ends with OK when the
//! client closes its side. File answers carry the file and everything it imports, transitively.

use std::collections::HashSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use prost::Message;
use prost_reflect::{DescriptorPool, FileDescriptor};

use crate::grpc::{percent_encode, Code};
use crate::http::{Body, BoxError};

/// The method path of v1.
pub const V1_PATH: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// The method path of v1alpha (same messages).
pub const V1ALPHA_PATH: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// `ServerReflectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(oneof = "Query", tags = "3, 4, 5, 6, 7")]
    pub query: Option<Query>,
}

/// The `message_request` oneof.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Query {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    #[prost(message, tag = "5")]
    FileContainingExtension(ExtensionRequest),
    #[prost(string, tag = "6")]
    AllExtensionNumbersOfType(String),
    #[prost(string, tag = "7")]
    ListServices(String),
}

/// `ExtensionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtensionRequest {
    #[prost(string, tag = "1")]
    pub containing_type: String,
    #[prost(int32, tag = "2")]
    pub extension_number: i32,
}

/// `ServerReflectionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub valid_host: String,
    #[prost(message, optional, tag = "2")]
    pub original_request: Option<Request>,
    #[prost(oneof = "Answer", tags = "4, 5, 6, 7")]
    pub answer: Option<Answer>,
}

/// The `message_response` oneof.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Answer {
    #[prost(message, tag = "4")]
    FileDescriptorResponse(FileDescriptorResponse),
    #[prost(message, tag = "5")]
    AllExtensionNumbersResponse(ExtensionNumberResponse),
    #[prost(message, tag = "6")]
    ListServicesResponse(ListServiceResponse),
    #[prost(message, tag = "7")]
    ErrorResponse(ErrorResponse),
}

/// `FileDescriptorResponse`: serialized `FileDescriptorProto`s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileDescriptorResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub file_descriptor_proto: Vec<Vec<u8>>,
}

/// `ExtensionNumberResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtensionNumberResponse {
    #[prost(string, tag = "1")]
    pub base_type_name: String,
    #[prost(int32, repeated, tag = "2")]
    pub extension_number: Vec<i32>,
}

/// `ListServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    pub service: Vec<ServiceResponse>,
}

/// `ServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceResponse {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `ErrorResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorResponse {
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// What a reflection stream answers from: one pool (the storage API), or several (the ingress: its
/// built-ins and each registered endpoint's descriptors).
pub trait Source: Send + 'static {
    /// The response to one request.
    fn answer(&self, request: &Request) -> Response;
}

impl Source for DescriptorPool {
    fn answer(&self, request: &Request) -> Response {
        answer(self, request)
    }
}

/// True for the paths this module serves.
pub fn handles(path: &str) -> bool {
    path == V1_PATH || path == V1ALPHA_PATH
}

/// Answers one reflection request from `pool`.
pub fn answer(pool: &DescriptorPool, request: &Request) -> Response {
    let answer = match &request.query {
        Some(Query::ListServices(_)) => Answer::ListServicesResponse(ListServiceResponse {
            service: pool
                .services()
                .map(|s| ServiceResponse {
                    name: s.full_name().to_owned(),
                })
                .collect(),
        }),
        Some(Query::FileByFilename(name)) => match pool.get_file_by_name(name) {
            Some(file) => files(&file),
            None => not_found(format!("file {name} not found")),
        },
        Some(Query::FileContainingSymbol(symbol)) => match file_of_symbol(pool, symbol) {
            Some(file) => files(&file),
            None => not_found(format!("symbol {symbol} not found")),
        },
        Some(Query::FileContainingExtension(e)) => {
            let file = pool.get_message_by_name(&e.containing_type).and_then(|m| {
                m.extensions()
                    .find(|x| x.number() as i32 == e.extension_number)
                    .map(|x| x.parent_file())
            });
            match file {
                Some(file) => files(&file),
                None => not_found(format!(
                    "extension {} of {} not found",
                    e.extension_number, e.containing_type
                )),
            }
        }
        Some(Query::AllExtensionNumbersOfType(name)) => match pool.get_message_by_name(name) {
            Some(m) => Answer::AllExtensionNumbersResponse(ExtensionNumberResponse {
                base_type_name: name.clone(),
                extension_number: m.extensions().map(|x| x.number() as i32).collect(),
            }),
            None => not_found(format!("type {name} not found")),
        },
        None => Answer::ErrorResponse(ErrorResponse {
            error_code: Code::InvalidArgument as i32,
            error_message: "the request asks nothing".into(),
        }),
    };
    Response {
        valid_host: request.host.clone(),
        original_request: Some(request.clone()),
        answer: Some(answer),
    }
}

fn not_found(message: String) -> Answer {
    Answer::ErrorResponse(ErrorResponse {
        error_code: Code::NotFound as i32,
        error_message: message,
    })
}

/// The file declaring `symbol`: a service, method, message, field, enum, enum value or extension.
fn file_of_symbol(pool: &DescriptorPool, symbol: &str) -> Option<FileDescriptor> {
    let symbol = symbol.trim_start_matches('.');
    let direct = pool
        .get_service_by_name(symbol)
        .map(|s| s.parent_file())
        .or_else(|| pool.get_message_by_name(symbol).map(|m| m.parent_file()))
        .or_else(|| pool.get_enum_by_name(symbol).map(|e| e.parent_file()))
        .or_else(|| pool.get_extension_by_name(symbol).map(|e| e.parent_file()));
    direct.or_else(|| {
        // A member (method, field, enum value): its parent's file.
        let (parent, _) = symbol.rsplit_once('.')?;
        pool.get_service_by_name(parent)
            .map(|s| s.parent_file())
            .or_else(|| pool.get_message_by_name(parent).map(|m| m.parent_file()))
            .or_else(|| pool.get_enum_by_name(parent).map(|e| e.parent_file()))
    })
}

/// `file` and every file it imports, transitively, each once (extension options kept).
fn files(file: &FileDescriptor) -> Answer {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![file.clone()];
    while let Some(next) = stack.pop() {
        if seen.insert(next.name().to_owned()) {
            out.push(next.encode_to_vec());
            stack.extend(next.dependencies());
        }
    }
    Answer::FileDescriptorResponse(FileDescriptorResponse {
        file_descriptor_proto: out,
    })
}

/// Serves one `ServerReflectionInfo` stream: each request message of the body gets its response as
/// it arrives; a request message larger than `max_message_size` ends the stream with
/// RESOURCE_EXHAUSTED.
pub fn serve<S: Source>(
    source: S,
    max_message_size: usize,
    request: http::Request<Incoming>,
) -> http::Response<Body> {
    let state = Stream {
        source,
        body: request.into_body(),
        buffer: BytesMut::new(),
        max_message_size,
        done: false,
    };
    let frames = futures::stream::unfold(state, Stream::next_frame);
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(http_body_util::StreamBody::new(frames)))
        .expect("valid response")
}

struct Stream<S> {
    source: S,
    body: Incoming,
    buffer: BytesMut,
    max_message_size: usize,
    done: bool,
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

impl<S: Source> Stream<S> {
    async fn next_frame(mut self) -> Option<(FrameResult, Stream<S>)> {
        if self.done {
            return None;
        }
        let end = |this: Stream<S>, code: Code, message: Option<String>| {
            let mut this = this;
            this.done = true;
            Some((Ok(Frame::trailers(trailers(code, message))), this))
        };
        loop {
            match self.take_message() {
                Err(message) => return end(self, Code::ResourceExhausted, Some(message)),
                Ok(Some(bytes)) => {
                    let Ok(request) = Request::decode(bytes) else {
                        let message = "a ServerReflectionRequest does not decode".to_owned();
                        return end(self, Code::InvalidArgument, Some(message));
                    };
                    let response = self.source.answer(&request).encode_to_vec();
                    let mut framed = BytesMut::with_capacity(5 + response.len());
                    framed.put_u8(0);
                    framed.put_u32(response.len() as u32);
                    framed.put_slice(&response);
                    return Some((Ok(Frame::data(framed.freeze())), self));
                }
                Ok(None) => {}
            }
            match self.body.frame().await {
                None => return end(self, Code::Ok, None),
                Some(Err(e)) => return end(self, Code::Cancelled, Some(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next complete request message in the buffer, if any.
    fn take_message(&mut self) -> Result<Option<Bytes>, String> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len > self.max_message_size || self.buffer[0] != 0 {
            return Err(format!(
                "request messages must be uncompressed and at most {} bytes",
                self.max_message_size
            ));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }
}

fn trailers(code: Code, message: Option<String>) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(crate::grpc::GRPC_STATUS, HeaderValue::from(code as u16));
    if let Some(value) = message.and_then(|m| HeaderValue::from_str(&percent_encode(&m)).ok()) {
        trailers.insert("grpc-message", value);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::proto::storage::DESCRIPTOR_SET).unwrap()
    }

    fn ask(query: Query) -> Answer {
        answer(
            &pool(),
            &Request {
                host: String::new(),
                query: Some(query),
            },
        )
        .answer
        .unwrap()
    }

    #[test]
    fn lists_services_and_finds_files_by_name_and_symbol() {
        let Answer::ListServicesResponse(list) = ask(Query::ListServices(String::new())) else {
            panic!("not a list")
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dev.restate.storage.scan.v1.Storage"]);
        for symbol in [
            "dev.restate.storage.scan.v1.Storage",
            "dev.restate.storage.scan.v1.Storage.Scan",
            "dev.restate.storage.scan.v1.Pair",
            "dev.restate.storage.scan.v1.Pair.value",
        ] {
            let Answer::FileDescriptorResponse(files) =
                ask(Query::FileContainingSymbol(symbol.into()))
            else {
                panic!("{symbol} not found")
            };
            let file =
                prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                    .unwrap();
            assert_eq!(file.name(), "dev/restate/storage/scan/v1/scan.proto");
        }
        let by_name = ask(Query::FileByFilename(
            "dev/restate/storage/scan/v1/scan.proto".into(),
        ));
        assert!(matches!(by_name, Answer::FileDescriptorResponse(_)));
        let Answer::ErrorResponse(e) = ask(Query::FileContainingSymbol("no.Such".into())) else {
            panic!("found a missing symbol")
        };
        assert_eq!(e.error_code, Code::NotFound as i32);
    }

    #[test]
    fn file_answers_carry_transitive_imports() {
        // The well-known types: api.proto imports source_context.proto and type.proto, which imports
        // any.proto (and source_context.proto again).
        let set = prost_types::FileDescriptorSet::decode(
            &include_bytes!(concat!(env!("OUT_DIR"), "/well_known_types.bin"))[..],
        )
        .unwrap();
        let pool = DescriptorPool::from_file_descriptor_set(set).unwrap();
        let request = Request {
            host: String::new(),
            query: Some(Query::FileByFilename("google/protobuf/api.proto".into())),
        };
        let Some(Answer::FileDescriptorResponse(files)) = answer(&pool, &request).answer else {
            panic!("no files")
        };
        let mut names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|f| {
                prost_types::FileDescriptorProto::decode(f.as_slice())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect();
        assert_eq!(names[0], "google/protobuf/api.proto");
        names.sort();
        assert_eq!(
            names,
            [
                "google/protobuf/any.proto",
                "google/protobuf/api.proto",
                "google/protobuf/source_context.proto",
                "google/protobuf/type.proto",
            ]
        );
    }
}
