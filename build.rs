//! Compiles the protos in `proto/` with protox (pure Rust: no system protoc) and generates prost code.
//! Also writes the descriptor sets the runtime embeds: the well-known types (to repair descriptors that
//! SDKs send) and the test endpoint's services.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/dev/restate/ext.proto",
        "proto/dev/restate/services.proto",
        "proto/dev/restate/service/discovery.proto",
        "proto/dev/restate/service/protocol.proto",
        "proto/restate/test/endpoint.proto",
        "proto/dev/restate/storage/scan/v1/scan.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).open_files(files)?;
    prost_build::Config::new().compile_fds(compiler.file_descriptor_set())?;
    // The test endpoint announces its services with this set. Encoded by protox's reflection pool, so
    // extension options (dev.restate.ext.*) survive, which prost_types would drop.
    std::fs::write(
        out.join("endpoint_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // The storage API's own descriptors: reflection on :9091, and `restatectl scan`'s key parser.
    std::fs::write(
        out.join("storage_scan_descriptor.bin"),
        prost::Message::encode_to_vec(&protox::compile(
            ["dev/restate/storage/scan/v1/scan.proto"],
            ["proto"],
        )?),
    )?;
    // The ingress's built-in services, served by its reflection next to the registered ones.
    std::fs::write(
        out.join("ingress_builtin_descriptor.bin"),
        prost::Message::encode_to_vec(&protox::compile(
            [
                "dev/restate/services.proto",
                "grpc/health/v1/health.proto",
                "grpc/reflection/v1/reflection.proto",
                "grpc/reflection/v1alpha/reflection.proto",
            ],
            ["proto"],
        )?),
    )?;
    // Canonical well-known types, substituted for the copies SDKs send.
    let wkt = protox::compile(
        [
            "google/protobuf/any.proto",
            "google/protobuf/api.proto",
            "google/protobuf/descriptor.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/source_context.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/type.proto",
            "google/protobuf/wrappers.proto",
        ],
        ["proto"],
    )?;
    std::fs::write(
        out.join("well_known_types.bin"),
        prost::Message::encode_to_vec(&wkt),
    )?;
    Ok(())
}
