//! User-namespace id mappings, as pods request them and containers' specs carry them.

/// One line of a uid_map/gid_map: `length` ids from `container_id` inside map to
/// `host_id` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    /// First id inside the user namespace.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub length: u32,
}
