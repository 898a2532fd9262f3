//! Compiles the vendored CRI `api.proto` with protox (pure Rust), so building Berth
//! needs no system `protoc`. Both the server and the client are generated: berthd
//! serves the former, the integration tests drive it with the latter.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/api.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set is embedded for gRPC server reflection (grpcurl list/describe).
    std::fs::write(out_dir.join("cri_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every RPC Berth does not implement yet answers `Unimplemented`.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
