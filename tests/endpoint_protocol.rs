//! The in-repo endpoint (`restate-test-endpoint`) speaks the service invocation protocol: these tests play
//! the runtime over HTTP/2 (h2c) and check every message it sends, in BIDI_STREAM style (request body kept
//! open, completions pushed) and REQUEST_RESPONSE style (request body closed after the replay), plus the
//! misbehaving modes and switches the runtime's tests rely on.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{h2_request, Endpoint};
use futures::channel::mpsc;
use futures::SinkExt;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use restate::proto::test::{AddRequest, CounterValue, EchoMessage, KeyRequest};
use restate::protocol::messages::{
    completion_message, get_state_entry_message, output_stream_entry_message, start_message,
    CompletionMessage, ErrorMessage, Failure, GetStateEntryMessage, OutputStreamEntryMessage,
    PollInputStreamEntryMessage, SetStateEntryMessage, StartMessage, SuspensionMessage,
};
use restate::protocol::{
    types, DecodeError, Decoder, Frame, FLAG_COMPLETED, FLAG_PARTIAL_STATE, FLAG_REQUIRES_ACK,
};

/// How long any single expected message may take.
const STEP: Duration = Duration::from_secs(10);

type BodyFrame = hyper::body::Frame<Bytes>;
type RequestBody = StreamBody<mpsc::Receiver<Result<BodyFrame, Infallible>>>;

/// Runs `f` on a throwaway current-thread tokio runtime (the test plays the runtime as an h2 client).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One invocation attempt, seen from the runtime's side: a streaming request body and the response.
struct Call {
    /// Our request body; `None` once closed.
    requests: Option<mpsc::Sender<Result<BodyFrame, Infallible>>>,
    status: u16,
    content_type: Option<String>,
    body: hyper::body::Incoming,
    decoder: Decoder,
    ended: bool,
}

impl Call {
    /// Opens `POST /invoke/{target}` on a fresh h2c connection and waits for the response head.
    async fn open(port: u16, target: &str) -> Call {
        let mut sender = common::h2_connect(port).await;
        let (requests, receiver) = mpsc::channel(64);
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{port}/invoke/{target}"))
            .header("content-type", "application/restate")
            .header("accept", "application/restate")
            .body::<RequestBody>(StreamBody::new(receiver))
            .unwrap();
        let response = tokio::time::timeout(STEP, sender.send_request(request))
            .await
            .expect("response head in time")
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        Call {
            requests: Some(requests),
            status,
            content_type,
            body: response.into_body(),
            decoder: Decoder::new(1 << 20),
            ended: false,
        }
    }

    /// Opens an attempt and checks the response head a runtime requires.
    async fn start(port: u16, target: &str) -> Call {
        let call = Call::open(port, target).await;
        assert_eq!(call.status, 200);
        assert_eq!(call.content_type.as_deref(), Some("application/restate"));
        call
    }

    async fn send(&mut self, frame: Frame) {
        let requests = self.requests.as_mut().expect("request body open");
        requests
            .send(Ok(BodyFrame::data(frame.encode())))
            .await
            .unwrap();
    }

    async fn send_all(&mut self, frames: Vec<Frame>) {
        for frame in frames {
            self.send(frame).await;
        }
    }

    /// Ends the request body, as a REQUEST_RESPONSE runtime does after the replay.
    fn close(&mut self) {
        self.requests = None;
    }

    /// The next message, or `None` at the end of the response; decode errors are returned.
    async fn try_recv(&mut self) -> Result<Option<Frame>, DecodeError> {
        loop {
            if let Some(frame) = self.decoder.next()? {
                return Ok(Some(frame));
            }
            if self.ended {
                assert_eq!(self.decoder.buffered(), 0, "a truncated message at the end");
                return Ok(None);
            }
            match tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("a message or the end in time")
            {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => panic!("response body failed: {e}"),
                None => self.ended = true,
            }
        }
    }

    async fn recv(&mut self) -> Option<Frame> {
        self.try_recv().await.unwrap()
    }

    /// The next message, which must exist.
    async fn expect(&mut self) -> Frame {
        self.recv().await.expect("another message")
    }

    /// Asserts the response ends now.
    async fn expect_end(&mut self) {
        assert_eq!(self.recv().await, None);
    }
}

/// A Start message with the complete state `state` (eager state).
fn start_frame(id: &[u8], known_entries: u32, state: &[(&str, &str)]) -> Frame {
    start(id, known_entries, state, false)
}

/// A Start message with an empty, partial state map: the endpoint must ask for every key.
fn start_partial(id: &[u8], known_entries: u32) -> Frame {
    start(id, known_entries, &[], true)
}

fn start(id: &[u8], known_entries: u32, state: &[(&str, &str)], partial: bool) -> Frame {
    let start = StartMessage {
        id: id.to_vec(),
        debug_id: hex(id),
        known_entries,
        state_map: state
            .iter()
            .map(|(k, v)| start_message::StateEntry {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        partial_state: partial,
    };
    let flags = if partial { FLAG_PARTIAL_STATE } else { 0 };
    Frame::message(types::START, flags, &start)
}

fn input_frame(argument: &impl Message) -> Frame {
    let entry = PollInputStreamEntryMessage {
        value: argument.encode_to_vec(),
    };
    Frame::message(types::POLL_INPUT_STREAM, FLAG_COMPLETED, &entry)
}

fn completion_frame(entry_index: u32, result: Option<completion_message::Result>) -> Frame {
    let completion = CompletionMessage {
        entry_index,
        result,
    };
    Frame::message(types::COMPLETION, 0, &completion)
}

fn add(key: &str, delta: i64) -> AddRequest {
    AddRequest {
        key: key.into(),
        delta,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts a GetState("total") entry; returns its result.
fn get_state(frame: &Frame) -> Option<get_state_entry_message::Result> {
    assert_eq!(frame.ty, types::GET_STATE, "{frame:?}");
    let entry = GetStateEntryMessage::decode(frame.payload.clone()).unwrap();
    assert_eq!(entry.key, b"total");
    assert_eq!(
        frame.flag_bit(),
        entry.result.is_some(),
        "COMPLETED iff a result: {entry:?}"
    );
    entry.result
}

/// Asserts a SetState("total", value) entry.
fn assert_set_state(frame: &Frame, value: &str) {
    assert_eq!(frame.ty, types::SET_STATE, "{frame:?}");
    assert_eq!(frame.flags, 0);
    let entry = SetStateEntryMessage::decode(frame.payload.clone()).unwrap();
    assert_eq!(entry.key, b"total");
    assert_eq!(String::from_utf8(entry.value).unwrap(), value);
}

/// The output entry's result.
fn output(frame: &Frame) -> output_stream_entry_message::Result {
    assert_eq!(frame.ty, types::OUTPUT_STREAM, "{frame:?}");
    assert_eq!(frame.flags, 0);
    OutputStreamEntryMessage::decode(frame.payload.clone())
        .unwrap()
        .result
        .expect("an output result")
}

fn output_value(frame: &Frame) -> Vec<u8> {
    match output(frame) {
        output_stream_entry_message::Result::Value(value) => value,
        other => panic!("expected a value, got {other:?}"),
    }
}

fn counter_output(frame: &Frame) -> i64 {
    CounterValue::decode(output_value(frame).as_slice())
        .unwrap()
        .value
}

fn error(frame: &Frame) -> ErrorMessage {
    assert_eq!(frame.ty, types::ERROR, "{frame:?}");
    ErrorMessage::decode(frame.payload.clone()).unwrap()
}

fn suspension(frame: &Frame) -> Vec<u32> {
    assert_eq!(frame.ty, types::SUSPENSION, "{frame:?}");
    SuspensionMessage::decode(frame.payload.clone())
        .unwrap()
        .entry_indexes
}

/// `GET /stats` over h2c: (attempts, side_effects).
fn stats(endpoint: &Endpoint) -> (u64, u64) {
    let (status, headers, body) = h2_request(endpoint.port, "GET", "/stats", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        json["attempts"].as_u64().unwrap(),
        json["side_effects"].as_u64().unwrap(),
    )
}

#[test]
fn add_answers_get_state_locally_when_the_state_is_complete() {
    let endpoint = Endpoint::start("ok", &[]);
    block_on(async {
        // Bidi style: the request body stays open, yet nothing needs a completion.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 1, &[("total", "5"), ("other", "x")]),
            input_frame(&add("a", 3)),
        ])
        .await;
        let got = call.expect().await;
        assert_eq!(
            get_state(&got),
            Some(get_state_entry_message::Result::Value(b"5".to_vec()))
        );
        assert_set_state(&call.expect().await, "8");
        assert_eq!(counter_output(&call.expect().await), 8);
        call.expect_end().await;

        // An absent key in a complete map is answered as empty.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-2", 1, &[]),
            input_frame(&add("b", -4)),
        ])
        .await;
        call.close();
        let got = call.expect().await;
        assert_eq!(
            get_state(&got),
            Some(get_state_entry_message::Result::Empty(()))
        );
        assert_set_state(&call.expect().await, "-4");
        assert_eq!(counter_output(&call.expect().await), -4);
        call.expect_end().await;
    });
}

#[test]
fn add_with_partial_state_waits_for_the_completion_in_bidi() {
    let endpoint = Endpoint::start("ok", &[]);
    block_on(async {
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![start_partial(b"id-1", 1), input_frame(&add("a", 3))])
            .await;
        assert_eq!(get_state(&call.expect().await), None);
        // Nothing more until the completion arrives.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call.recv())
                .await
                .is_err(),
            "the endpoint must wait for the GetState completion"
        );
        call.send(completion_frame(
            1,
            Some(completion_message::Result::Value(b"10".to_vec())),
        ))
        .await;
        assert_set_state(&call.expect().await, "13");
        assert_eq!(counter_output(&call.expect().await), 13);
        call.expect_end().await;

        // A completion saying "absent".
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Get").await;
        let key = KeyRequest { key: "b".into() };
        call.send_all(vec![start_partial(b"id-2", 1), input_frame(&key)])
            .await;
        assert_eq!(get_state(&call.expect().await), None);
        call.send(completion_frame(
            1,
            Some(completion_message::Result::Empty(())),
        ))
        .await;
        assert_eq!(counter_output(&call.expect().await), 0);
        call.expect_end().await;
    });
}

#[test]
fn add_in_request_response_style_suspends_on_get_state() {
    let endpoint = Endpoint::start("ok", &["--request-response"]);
    block_on(async {
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![start_partial(b"id-1", 1), input_frame(&add("a", 3))])
            .await;
        call.close();
        assert_eq!(get_state(&call.expect().await), None);
        assert_eq!(suspension(&call.expect().await), vec![1]);
        call.expect_end().await;

        // Resumed: the GetState is now completed in the journal.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        let completed = GetStateEntryMessage {
            key: b"total".to_vec(),
            result: Some(get_state_entry_message::Result::Value(b"2".to_vec())),
        };
        call.send_all(vec![
            start_partial(b"id-1", 2),
            input_frame(&add("a", 3)),
            Frame::message(types::GET_STATE, FLAG_COMPLETED, &completed),
        ])
        .await;
        call.close();
        assert_set_state(&call.expect().await, "5");
        assert_eq!(counter_output(&call.expect().await), 5);
        call.expect_end().await;
    });
}

#[test]
fn a_replayed_journal_is_not_sent_again() {
    let endpoint = Endpoint::start("ok", &[]);
    block_on(async {
        let get = GetStateEntryMessage {
            key: b"total".to_vec(),
            result: Some(get_state_entry_message::Result::Value(b"4".to_vec())),
        };
        let set = SetStateEntryMessage {
            key: b"total".to_vec(),
            value: b"6".to_vec(),
        };
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            // The state map already says 6: the replayed GetState (4) is what counts.
            start_frame(b"id-1", 3, &[("total", "6")]),
            input_frame(&add("a", 2)),
            Frame::message(types::GET_STATE, FLAG_COMPLETED, &get),
            Frame::message(types::SET_STATE, 0, &set),
        ])
        .await;
        call.close();
        assert_eq!(counter_output(&call.expect().await), 6);
        call.expect_end().await;

        // A replayed GetState that is not completed yet: in bidi the completion follows the replay.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        let pending = GetStateEntryMessage {
            key: b"total".to_vec(),
            result: None,
        };
        call.send_all(vec![
            start_partial(b"id-2", 2),
            input_frame(&add("a", 1)),
            Frame::message(types::GET_STATE, 0, &pending),
            completion_frame(1, Some(completion_message::Result::Value(b"1".to_vec()))),
        ])
        .await;
        assert_set_state(&call.expect().await, "2");
        assert_eq!(counter_output(&call.expect().await), 2);
        call.expect_end().await;

        // ... and without a completion in request/response style, it suspends on it.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_partial(b"id-3", 2),
            input_frame(&add("a", 1)),
            Frame::message(types::GET_STATE, 0, &pending),
        ])
        .await;
        call.close();
        assert_eq!(suspension(&call.expect().await), vec![1]);
        call.expect_end().await;
    });
}

#[test]
fn a_journal_that_does_not_match_the_handler_is_a_journal_mismatch() {
    let endpoint = Endpoint::start("ok", &[]);
    block_on(async {
        let set = SetStateEntryMessage {
            key: b"total".to_vec(),
            value: b"6".to_vec(),
        };
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 2, &[]),
            input_frame(&add("a", 2)),
            Frame::message(types::SET_STATE, 0, &set),
        ])
        .await;
        call.close();
        let error = error(&call.expect().await);
        assert_eq!(error.code, 32);
        assert_eq!(error.message, "journal mismatch");
        call.expect_end().await;
    });
}

#[test]
fn fail_attempts_fails_after_the_set_state_then_succeeds_on_replay() {
    let endpoint = Endpoint::start("ok", &["--fail-attempts", "2"]);
    block_on(async {
        // Attempt 1 runs the handler: GetState, SetState, then the injected error.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 1, &[("total", "1")]),
            input_frame(&add("a", 5)),
        ])
        .await;
        call.close();
        let get = call.expect().await;
        assert_eq!(
            get_state(&get),
            Some(get_state_entry_message::Result::Value(b"1".to_vec()))
        );
        let set = call.expect().await;
        assert_set_state(&set, "6");
        let failure = error(&call.expect().await);
        assert_eq!(failure.code, 13);
        assert_eq!(failure.message, "injected failure on attempt 1");
        call.expect_end().await;

        // The runtime retries with the journal it stored: the endpoint replays GetState and SetState.
        let journal = vec![
            start_frame(b"id-1", 3, &[("total", "6")]),
            input_frame(&add("a", 5)),
            get.clone(),
            set.clone(),
        ];
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(journal.clone()).await;
        call.close();
        let failure = error(&call.expect().await);
        assert_eq!(failure.message, "injected failure on attempt 2");
        call.expect_end().await;

        // Attempt 3 = K + 1 completes.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(journal).await;
        assert_eq!(counter_output(&call.expect().await), 6);
        call.expect_end().await;

        // Attempts are counted per invocation id.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-2", 1, &[]),
            input_frame(&add("a", 5)),
        ])
        .await;
        call.close();
        get_state(&call.expect().await);
        assert_set_state(&call.expect().await, "5");
        assert_eq!(
            error(&call.expect().await).message,
            "injected failure on attempt 1"
        );
        call.expect_end().await;
    });
    assert_eq!(stats(&endpoint), (4, 0));
}

#[test]
fn side_effects_wait_for_their_ack_and_are_not_rerun_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effects.txt");
    let lines = || std::fs::read_to_string(&file).unwrap_or_default();
    let endpoint = Endpoint::start("ok", &[]);
    let echo = EchoMessage {
        text: format!("side-effect:{}", file.display()),
        number: 7,
        data: vec![1, 2, 3],
    };
    block_on(async {
        // Bidi: the side effect runs, is journaled with REQUIRES_ACK, and the output waits for the ack.
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![start_partial(b"se-1", 1), input_frame(&echo)])
            .await;
        let effect = call.expect().await;
        assert_eq!(effect.ty, types::SIDE_EFFECT);
        assert_eq!(effect.flags, FLAG_REQUIRES_ACK);
        assert_eq!(lines(), format!("{}\n", hex(b"se-1")));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call.recv())
                .await
                .is_err(),
            "the endpoint must wait for the ack"
        );
        call.send(completion_frame(1, None)).await;
        assert_eq!(output_value(&call.expect().await), echo.encode_to_vec());
        call.expect_end().await;

        // Replayed (the runtime never sets REQUIRES_ACK on replay): not run again, output only.
        let replayed_effect = Frame::new(types::SIDE_EFFECT, 0, effect.payload.clone());
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![
            start_partial(b"se-1", 2),
            input_frame(&echo),
            replayed_effect,
        ])
        .await;
        call.close();
        assert_eq!(output_value(&call.expect().await), echo.encode_to_vec());
        call.expect_end().await;
        assert_eq!(lines().lines().count(), 1);

        // Request/response: the request body ends before the ack, so it suspends on the side effect.
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![start_partial(b"se-2", 1), input_frame(&echo)])
            .await;
        call.close();
        let effect = call.expect().await;
        assert_eq!(
            (effect.ty, effect.flags),
            (types::SIDE_EFFECT, FLAG_REQUIRES_ACK)
        );
        assert_eq!(suspension(&call.expect().await), vec![1]);
        call.expect_end().await;
        assert_eq!(lines(), format!("{}\n{}\n", hex(b"se-1"), hex(b"se-2")));
        // Resumed with the stored side effect: not run again.
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![
            start_partial(b"se-2", 2),
            input_frame(&echo),
            Frame::new(types::SIDE_EFFECT, 0, effect.payload.clone()),
        ])
        .await;
        call.close();
        assert_eq!(output_value(&call.expect().await), echo.encode_to_vec());
        call.expect_end().await;

        // The ack may also come as `empty`.
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![start_partial(b"se-3", 1), input_frame(&echo)])
            .await;
        assert_eq!(call.expect().await.ty, types::SIDE_EFFECT);
        call.send(completion_frame(
            1,
            Some(completion_message::Result::Empty(())),
        ))
        .await;
        assert_eq!(output_value(&call.expect().await), echo.encode_to_vec());
        call.expect_end().await;
    });
    assert_eq!(lines().lines().count(), 3);
    assert_eq!(stats(&endpoint), (5, 3));
}

#[test]
fn echo_config_and_counter_get_answer_their_outputs() {
    let endpoint = Endpoint::start("ok", &[]);
    block_on(async {
        let echo = EchoMessage {
            text: "hello".into(),
            number: -1,
            data: vec![0, 255],
        };
        let mut call = Call::start(endpoint.port, "restate.test.Echo/Echo").await;
        call.send_all(vec![start_frame(b"e", 1, &[]), input_frame(&echo)])
            .await;
        assert_eq!(output_value(&call.expect().await), echo.encode_to_vec());
        call.expect_end().await;

        let mut call = Call::start(endpoint.port, "restate.test.Config/Get").await;
        call.send_all(vec![start_frame(b"c", 1, &[]), input_frame(&())])
            .await;
        let config = EchoMessage::decode(output_value(&call.expect().await).as_slice()).unwrap();
        assert_eq!(config.text, "config");
        call.expect_end().await;

        let mut call = Call::start(endpoint.port, "restate.test.Counter/Get").await;
        let key = KeyRequest { key: "k".into() };
        call.send_all(vec![
            start_frame(b"g", 1, &[("total", "42")]),
            input_frame(&key),
        ])
        .await;
        call.close();
        get_state(&call.expect().await);
        assert_eq!(counter_output(&call.expect().await), 42);
        call.expect_end().await;

        // An argument that does not decode is a terminal failure of the invocation.
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        let garbage = PollInputStreamEntryMessage {
            value: vec![0xff, 0xff],
        };
        call.send_all(vec![
            start_frame(b"x", 1, &[]),
            Frame::message(types::POLL_INPUT_STREAM, FLAG_COMPLETED, &garbage),
        ])
        .await;
        match output(&call.expect().await) {
            output_stream_entry_message::Result::Failure(Failure { code, .. }) => {
                assert_eq!(code, 3)
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        call.expect_end().await;
    });
}

#[test]
fn unknown_services_and_methods_are_404() {
    let endpoint = Endpoint::start("ok", &[]);
    let headers = [("content-type", "application/restate")];
    for path in [
        "/invoke/restate.test.Counter/Nope",
        "/invoke/restate.test.Nope/Add",
        "/invoke/restate.test.Counter",
    ] {
        let (status, _, _) = h2_request(endpoint.port, "POST", path, &headers, b"");
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(stats(&endpoint), (0, 0));
}

#[test]
fn error_terminal_mode_outputs_a_failure_after_set_state() {
    let endpoint = Endpoint::start("error-terminal", &[]);
    block_on(async {
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 1, &[]),
            input_frame(&add("a", 1)),
        ])
        .await;
        call.close();
        get_state(&call.expect().await);
        assert_set_state(&call.expect().await, "1");
        assert_eq!(
            output(&call.expect().await),
            output_stream_entry_message::Result::Failure(Failure {
                code: 9,
                message: "terminal failure".into()
            })
        );
        call.expect_end().await;
    });
}

#[test]
fn violate_mode_sends_an_unknown_message_type() {
    let endpoint = Endpoint::start("violate", &[]);
    let (status, headers, _) = h2_request(endpoint.port, "POST", "/discover", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/proto");
    block_on(async {
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 1, &[]),
            input_frame(&add("a", 1)),
        ])
        .await;
        assert_eq!(call.try_recv().await, Err(DecodeError::UnknownType(0x0123)));
    });
    assert_eq!(stats(&endpoint), (1, 0));
}

#[test]
fn hang_mode_reads_the_start_and_never_answers() {
    let endpoint = Endpoint::start("hang", &[]);
    let (status, _, _) = h2_request(endpoint.port, "POST", "/discover", &[], b"");
    assert_eq!(status, 200);
    block_on(async {
        let mut call = Call::start(endpoint.port, "restate.test.Counter/Add").await;
        call.send_all(vec![
            start_frame(b"id-1", 1, &[]),
            input_frame(&add("a", 1)),
        ])
        .await;
        call.close();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), call.recv())
                .await
                .is_err(),
            "hang mode must neither write nor end"
        );
    });
    assert_eq!(stats(&endpoint), (1, 0));
}
