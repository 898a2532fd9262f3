//! The CRI edge: RuntimeService and ImageService handlers. They validate and translate
//! requests, call into the daemon's subsystems, and map errors to gRPC codes.

mod convert;
pub mod error;
mod image;
#[allow(unsafe_code)] // sysconf(_SC_CLK_TCK)
mod metrics;
mod runtime;
#[allow(unsafe_code)] // setns(2) into the pod netns to read its interfaces
mod stats;
mod status;
pub mod trace;

use std::sync::{Arc, RwLock};

use berth_image::ImageStore;

use crate::config::Config;
use crate::container::ContainerManager;
use crate::pod::PodManager;

/// Runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "berth";
/// The CRI API version this runtime speaks.
pub const RUNTIME_API_VERSION: &str = "v1";
/// kubelet requires `VersionResponse.version` to be exactly this.
pub const KUBELET_API_VERSION: &str = "0.1.0";

/// State shared by every handler.
#[derive(Debug)]
pub struct Shared {
    /// The daemon's configuration.
    pub config: Config,
    /// Pod CIDRs from kubelet's `UpdateRuntimeConfig`, used by the built-in network.
    pub pod_cidrs: Arc<RwLock<Vec<String>>>,
    /// Pod sandboxes.
    pub pods: Arc<PodManager>,
    /// Pulled images and their unpacked layers.
    pub images: ImageStore,
    /// Containers.
    pub containers: Arc<ContainerManager>,
    /// The streaming server behind Exec, Attach and PortForward, once started.
    pub streams: std::sync::OnceLock<berth_stream::StreamServer>,
}

/// Implements both CRI services over the daemon's shared state.
#[derive(Debug, Clone)]
pub struct CriService {
    shared: Arc<Shared>,
}

impl CriService {
    /// A service over `config`: opens the image store (cleaning up interrupted pulls).
    pub fn new(config: Config) -> Result<Self, berth_image::StoreError> {
        let pod_cidrs = Arc::new(RwLock::new(Vec::new()));
        let images = ImageStore::open(config.image_store_dir(), config.store_options())?;
        Ok(Self {
            shared: Arc::new(Shared {
                pods: Arc::new(PodManager::new(config.clone(), Arc::clone(&pod_cidrs))),
                containers: Arc::new(ContainerManager::new(config.clone(), images.clone())),
                config,
                pod_cidrs,
                images,
                streams: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The image store (for the admin socket's `berthd image` commands).
    pub fn image_store(&self) -> ImageStore {
        self.shared.images.clone()
    }

    /// Rebuilds in-memory state from disk; run once before serving.
    pub async fn recover(&self) -> crate::pod::Result<()> {
        self.shared.pods.recover().await?;
        Ok(self.shared.containers.recover().await?)
    }

    /// Starts the streaming server on `addr` (berthd start-up); returns its base URL.
    pub async fn start_streaming(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<String, berth_stream::StartError> {
        let backend = Arc::new(crate::stream::Backend::new(
            Arc::downgrade(&self.shared.containers),
            Arc::downgrade(&self.shared.pods),
            self.shared.config.state_dir.clone(),
        ));
        let config = berth_stream::StreamConfig {
            addr,
            ..berth_stream::StreamConfig::default()
        };
        let server = berth_stream::StreamServer::start(config, backend).await?;
        let url = server.base_url().to_owned();
        // A second start keeps the first server (the new one stops when dropped).
        let _ = self.shared.streams.set(server);
        Ok(url)
    }

    /// Pods and containers by state for the metrics endpoint, read at each scrape
    /// (without keeping the daemon's state alive).
    pub fn state_source(&self) -> crate::prom::StateSource {
        use berth_proto::v1::{ContainerState, PodSandboxState};
        let shared = Arc::downgrade(&self.shared);
        Arc::new(move || {
            let mut counts = crate::prom::StateCounts::default();
            let Some(shared) = shared.upgrade() else {
                return counts;
            };
            for state in ["ready", "notready"] {
                counts.pods.insert(state, 0);
            }
            for state in ["created", "running", "exited", "unknown"] {
                counts.containers.insert(state, 0);
            }
            for pod in shared.pods.list(None) {
                let state = match pod.cri_state() {
                    PodSandboxState::SandboxReady => "ready",
                    _ => "notready",
                };
                *counts.pods.entry(state).or_insert(0) += 1;
            }
            for ctr in shared.containers.list(None) {
                let state = match ctr.cri_state() {
                    ContainerState::ContainerCreated => "created",
                    ContainerState::ContainerRunning => "running",
                    ContainerState::ContainerExited => "exited",
                    _ => "unknown",
                };
                *counts.containers.entry(state).or_insert(0) += 1;
            }
            counts
        })
    }

    /// Applies the keys of a config reload that change under a running daemon
    /// (except `log.level` and `metrics.address`, which the daemon applies itself).
    pub fn apply_live_config(&self, plan: &crate::reload::Plan) {
        let c = &plan.config;
        let changed = |prefix: &str| plan.live.iter().any(|k| k.starts_with(prefix));
        if changed("registry.") || changed("image.") {
            self.shared.images.set_options(c.store_options());
        }
        if changed("cni.") {
            self.shared
                .pods
                .set_cni_dirs(c.cni.conf_dir.clone(), c.cni.plugin_dirs.clone());
        }
        if changed("cdi.") {
            self.shared
                .containers
                .set_cdi_spec_dirs(c.cdi.spec_dirs.clone());
        }
    }

    fn streams(&self) -> crate::error::Result<&berth_stream::StreamServer> {
        self.shared.streams.get().ok_or_else(|| {
            crate::error::Error::Unavailable("the streaming server is not running".into())
        })
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    fn pod_cidrs(&self) -> Vec<String> {
        self.shared
            .pod_cidrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Items per message of the `Stream*` list RPCs: small enough to stay far below the
/// 16 MiB message limit, large enough to keep the message count low.
pub const STREAM_CHUNK: usize = 256;

/// A `Stream*` RPC's body: `items` in chunks of at least one item, then EOF (an
/// empty list sends no message at all, as the API requires).
pub fn chunked<T, R>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R + Send + 'static,
) -> tonic::codegen::BoxStream<R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let mut items = items.into_iter().peekable();
    let mut chunks = Vec::new();
    while items.peek().is_some() {
        chunks.push(Ok(wrap(items.by_ref().take(STREAM_CHUNK).collect())));
    }
    Box::pin(tokio_stream::iter(chunks))
}
