//! Ingress decoding through the real SDK's descriptors: the gRPC frame, a protobuf request, a Connect
//! JSON request (JSON → DynamicMessage → protobuf), key extraction, and the response path (protobuf →
//! JSON). Must never panic; what the JSON path encodes must decode and transcode back.
//!
//! Input: byte 0 picks the method, byte 1 the path, the rest is the body.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use restate::ingress::codec;

fuzz_target!(|data: &[u8]| {
    let [pick, path, body @ ..] = data else {
        return;
    };
    let methods = common::methods();
    let (service, method) = &methods[usize::from(*pick) % methods.len()];
    let body = Bytes::copy_from_slice(body);
    match path % 4 {
        0 => {
            if let Ok(argument) = codec::unframe(body)
                .and_then(|message| codec::proto_request(&method.input, message))
            {
                let _ = service.extract_key(method, &argument);
            }
        }
        1 => {
            if let Ok(argument) = codec::json_request(&method.input, &body) {
                // What we encoded is valid for the method: it decodes, has a key, and writes as JSON.
                let argument = codec::proto_request(&method.input, argument).expect("re-decodes");
                service
                    .extract_key(method, &argument)
                    .expect("key of our own encoding");
                codec::json_response(&method.input, argument).expect("transcodes back");
            }
        }
        2 => {
            let _ = codec::json_response(&method.output, body);
        }
        _ => {
            // dev.restate.Ingress/Invoke with a protobuf body: the named method's key from the argument.
            if let Ok(request) = restate::proto::restate::InvokeRequest::decode(body) {
                let named = methods
                    .iter()
                    .find(|(s, m)| s.name == request.service && m.name == request.method);
                if let Some((service, method)) = named {
                    let _ = service.extract_key(method, &request.argument);
                }
            }
        }
    }
});
