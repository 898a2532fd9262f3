//! Berth's image layer: parse references, pull images from OCI registries (mirrors,
//! plain-HTTP loopback registries, basic and bearer auth), keep them in a
//! content-addressed store and unpack each layer once into an overlay-ready snapshot
//! directory.

pub mod reference;

pub use reference::{Digest, DigestError, Reference, ReferenceError};
