//! Discovery response parsing: decoding a `ServiceDiscoveryResponse`, reading Restate's options,
//! repairing the SDK's descriptors, validating services and key fields, registering them, the
//! persisted form's round trip, and key extraction for every method. Must never panic.
//!
//! Input: the response bytes as an endpoint would send them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use restate::schema::{self, Schemas};

fuzz_target!(|data: &[u8]| {
    let Ok(discovered) = schema::discover(data) else {
        return;
    };
    let Ok((schemas, _)) = Schemas::default().register(
        "http://127.0.0.1:9080",
        Default::default(),
        discovered,
        true,
    ) else {
        return;
    };
    // What was accepted once is accepted again at restart (the one stored response is this input).
    let restored = Schemas::from_persisted(schemas.to_persisted(), |_| Ok(data.to_vec()))
        .expect("persisted form reloads");
    assert_eq!(
        restored.services.keys().collect::<Vec<_>>(),
        schemas.services.keys().collect::<Vec<_>>()
    );
    for service in schemas.services.values() {
        for method in service.methods.values() {
            let _ = service.extract_key(method, data);
            let _ = service.extract_key(method, &[]);
        }
    }
});
