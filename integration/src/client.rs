//! A typed CRI client over a Unix socket.

use std::path::{Path, PathBuf};

use berth_proto::v1::image_service_client::ImageServiceClient;
use berth_proto::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Both CRI services on one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the gRPC server on `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://berth.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(16 * 1024 * 1024),
            image: ImageServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
        })
    }

    /// Whether a CRI server on `socket` answers Version: how a runtime being started
    /// (berthd, a containerd peer) is known to be ready.
    pub async fn answers(socket: &Path) -> bool {
        match Self::connect(socket).await {
            Ok(mut client) => client
                .runtime
                .version(berth_proto::v1::VersionRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}
