//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed),
//! then generates the tonic/prost code, the proto3 canonical JSON (pbjson) impls
//! used by the REST gateway, and the descriptor set served by reflection.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds migrations/ at compile time but cannot tell cargo
    // to watch it on stable Rust: a new migration alone must still rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(["hookpost/v1/webhook_service.proto"], ["proto"])?;
    let descriptor_path = out.join("hookpost_descriptor.bin");
    std::fs::write(&descriptor_path, fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Well-known types come from pbjson-types so they serialise as canonical
        // JSON; marking them "compiled" stops prost adding its own prost_types
        // mapping, which would clash with this one.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // Payloads and metadata stay in their wire form (src/proto/raw_struct.rs).
        .extern_path(".google.protobuf.Struct", "crate::proto::RawStruct")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".google.protobuf.Struct", "crate::proto::RawStruct")
        .build(&[".hookpost"])?;
    Ok(())
}
