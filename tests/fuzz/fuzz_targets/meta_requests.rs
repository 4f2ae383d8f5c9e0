//! Meta request bodies: `POST /endpoints` (then its URI's normalisation), `PATCH /services/{name}` and
//! `DELETE /invocations` (then the sid). Must never panic; bad bodies are errors.
//!
//! Input: byte 0 picks the body kind, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use restate::meta::requests::{self, CancelInvocation, PatchService, RegisterRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(request) = requests::parse::<RegisterRequest>(body) {
                let _ = restate::schema::endpoint_id(&request.uri);
            }
        }
        1 => {
            let _ = requests::parse::<PatchService>(body);
        }
        _ => {
            if let Ok(request) = requests::parse::<CancelInvocation>(body) {
                let _ = request.invocation_id();
            }
        }
    }
});
