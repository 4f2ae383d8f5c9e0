//! The service-protocol stream as an endpoint sends it: arbitrary bytes, pushed in chunks through the
//! streaming frame decoder, and every frame it yields decoded as its message type. Must never panic,
//! and the decoder never holds more than one maximal frame (a header declaring a huge length
//! allocates nothing).
//!
//! Input: byte 0 chooses the chunk size (1..=64), the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use restate::protocol::messages::*;
use restate::protocol::{types, Decoder, Frame, Header};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let limit = restate::config::Invoker::default().message_size_limit;
    let mut decoder = Decoder::new(limit);
    for piece in stream.chunks(usize::from(chunk % 64) + 1) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(frame)) => decode(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() < Header::SIZE + limit);
    }
});

/// Decodes the payload as the message its type announces; re-encoding what decoded must round-trip.
fn decode(frame: &Frame) {
    fn check<M: Message + Default + PartialEq + std::fmt::Debug>(frame: &Frame) {
        if let Ok(message) = M::decode(frame.payload.clone()) {
            let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded decodes");
            assert_eq!(again, message);
        }
    }
    match frame.ty {
        types::START => check::<StartMessage>(frame),
        types::COMPLETION => check::<CompletionMessage>(frame),
        types::SUSPENSION => check::<SuspensionMessage>(frame),
        types::ERROR => check::<ErrorMessage>(frame),
        types::POLL_INPUT_STREAM => check::<PollInputStreamEntryMessage>(frame),
        types::OUTPUT_STREAM => check::<OutputStreamEntryMessage>(frame),
        types::GET_STATE => check::<GetStateEntryMessage>(frame),
        types::SET_STATE => check::<SetStateEntryMessage>(frame),
        types::CLEAR_STATE => check::<ClearStateEntryMessage>(frame),
        types::SLEEP => check::<SleepEntryMessage>(frame),
        types::INVOKE => check::<InvokeEntryMessage>(frame),
        types::BACKGROUND_INVOKE => check::<BackgroundInvokeEntryMessage>(frame),
        types::AWAKEABLE => check::<AwakeableEntryMessage>(frame),
        types::COMPLETE_AWAKEABLE => {
            check::<CompleteAwakeableEntryMessage>(frame);
            if let Ok(m) = CompleteAwakeableEntryMessage::decode(frame.payload.clone()) {
                let _ = restate::partition::processor::parse_awakeable_id(&m.id);
            }
        }
        // Custom entries (the SDK's side effects) are stored and replayed verbatim.
        _ => {}
    }
}
