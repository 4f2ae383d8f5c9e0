//! Shared by the targets: the real SDK's services, registered from the discovery response captured by
//! seed.sh (seeds/discovery/sdk-0.4.1.bin).

use std::sync::{Arc, OnceLock};

use restate::schema::{self, Method, Schemas, Service};

/// The discovery response of tests/sdk/services.js (SDK 0.4.1).
pub const SDK_DISCOVERY: &[u8] = include_bytes!("../seeds/discovery/sdk-0.4.1.bin");

/// Every (service, method) the SDK registers, in a stable order.
pub fn methods() -> &'static [(Arc<Service>, Method)] {
    static METHODS: OnceLock<Vec<(Arc<Service>, Method)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let discovered = schema::discover(SDK_DISCOVERY).expect("the SDK's discovery is valid");
        let (schemas, _) = Schemas::default()
            .register(
                "http://127.0.0.1:9080",
                Default::default(),
                discovered,
                true,
            )
            .expect("the SDK's services register");
        schemas
            .services
            .values()
            .flat_map(|s| s.methods.values().map(|m| (s.clone(), m.clone())))
            .collect()
    })
}
