//! The Container Runtime Interface (`runtime.v1`) as published in
//! `k8s.io/cri-api` v0.37.2, generated with tonic/prost at build time.
//!
//! See `proto/README.md` for where `api.proto` comes from and how to update it.

#![forbid(unsafe_code)]

/// The upstream cri-api module version `proto/api.proto` was taken from.
pub const CRI_API_VERSION: &str = "v0.37.2";

/// Encoded `FileDescriptorSet` of `api.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

/// `runtime.v1`: RuntimeService, ImageService and their messages.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    missing_docs,
    reason = "generated code"
)]
pub mod runtime {
    /// Version 1 of the CRI.
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;
