//! Protobuf messages generated from `proto/` by build.rs (protox + prost-build).

/// Service discovery (`dev.restate.service.discovery`).
pub mod discovery {
    include!(concat!(
        env!("OUT_DIR"),
        "/dev.restate.service.discovery.rs"
    ));
}

/// Built-in services (`dev.restate`).
pub mod restate {
    include!(concat!(env!("OUT_DIR"), "/dev.restate.rs"));
}

/// Restate's options (`dev.restate.ext`).
pub mod ext {
    include!(concat!(env!("OUT_DIR"), "/dev.restate.ext.rs"));
}

/// The in-repo test endpoint's services (`restate.test`).
pub mod test {
    include!(concat!(env!("OUT_DIR"), "/restate.test.rs"));

    /// The descriptor set of the test endpoint's files (extension options intact).
    pub static DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/endpoint_descriptor.bin"));
}

/// The storage API (`dev.restate.storage.scan.v1`), served on :9091.
pub mod storage {
    include!(concat!(env!("OUT_DIR"), "/dev.restate.storage.scan.v1.rs"));

    /// The descriptor set of `dev/restate/storage/scan/v1/scan.proto`.
    pub static DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/storage_scan_descriptor.bin"));
}

/// gRPC health checking (`grpc.health.v1`), served by the ingress.
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// The descriptors of the ingress's built-in services (`dev.restate.Ingress`, `grpc.health.v1.Health`,
/// reflection v1 and v1alpha), which its reflection serves next to the registered services.
pub static INGRESS_BUILTIN_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ingress_builtin_descriptor.bin"));
