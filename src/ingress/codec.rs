//! Pure transcoding of ingress messages: the gRPC 5-byte framing, and protobuf ↔ Connect JSON through
//! a service's descriptors. No IO and no state, so that every byte a caller controls passes through
//! functions that unit tests and the `ingress` fuzz target (tests/fuzz) can call directly.

use bytes::{Buf, Bytes};
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::CallError;
use crate::grpc::Code;

/// The gRPC message inside its 5-byte frame (flag byte, big-endian length); a unary call carries
/// exactly one uncompressed message.
pub fn unframe(mut body: Bytes) -> Result<Bytes, CallError> {
    if body.len() < 5 {
        return Err(CallError::new(
            Code::InvalidArgument,
            "the gRPC message frame is truncated",
        ));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(CallError::new(
            Code::Unimplemented,
            "compressed gRPC messages are not supported",
        ));
    }
    if length != body.len() {
        return Err(CallError::new(
            Code::InvalidArgument,
            format!(
                "the gRPC frame says {length} bytes but {} follow (unary calls carry one message)",
                body.len()
            ),
        ));
    }
    Ok(body)
}

/// A protobuf request, checked to decode as `input` (then passed on unchanged).
pub fn proto_request(input: &MessageDescriptor, bytes: Bytes) -> Result<Bytes, CallError> {
    DynamicMessage::decode(input.clone(), bytes.clone())
        .map_err(|e| CallError::new(Code::InvalidArgument, format!("undecodable request: {e}")))?;
    Ok(bytes)
}

/// A Connect JSON request body as the protobuf encoding of `input`; trailing data is refused.
pub fn json_request(input: &MessageDescriptor, body: &[u8]) -> Result<Bytes, CallError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut deserializer,
        &DeserializeOptions::new(),
    )
    .and_then(|m| deserializer.end().map(|_| m))
    .map_err(|e| CallError::new(Code::InvalidArgument, format!("invalid JSON request: {e}")))?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// A service's protobuf answer as the Connect JSON body (64-bit integers as strings, default fields
/// written, integral doubles as integers).
pub fn json_response(output: &MessageDescriptor, bytes: Bytes) -> Result<Vec<u8>, CallError> {
    let message = DynamicMessage::decode(output.clone(), bytes).map_err(|e| {
        CallError::new(
            Code::Internal,
            format!("the service answered an undecodable message: {e}"),
        )
    })?;
    let mut value = message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .stringify_64_bit_integers(true)
                .skip_default_fields(false),
        )
        .map_err(|e| CallError::new(Code::Internal, format!("cannot write JSON: {e}")))?;
    integral_numbers(&mut value);
    serde_json::to_vec(&value)
        .map_err(|e| CallError::new(Code::Internal, format!("cannot write JSON: {e}")))
}

/// Writes integral doubles as integers (`5`, not `5.0`), as canonical proto3 JSON does: JSON numbers
/// have no integer/float distinction, but clients compare text.
fn integral_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    *n = serde_json::Number::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frames_are_checked() {
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])).unwrap(),
            Bytes::from_static(&[8, 1])
        );
        assert_eq!(
            unframe(Bytes::from_static(&[1, 0, 0, 0, 0])).unwrap_err().0,
            Code::Unimplemented
        );
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))
                .unwrap_err()
                .0,
            Code::InvalidArgument
        );
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0])).unwrap_err().0,
            Code::InvalidArgument
        );
    }

    #[test]
    fn integral_doubles_are_written_as_integers() {
        let mut value = serde_json::json!({"a": 5.0, "b": [2.5, 1e300], "c": "x"});
        integral_numbers(&mut value);
        assert_eq!(value.to_string(), r#"{"a":5,"b":[2.5,1e+300],"c":"x"}"#);
    }
}
