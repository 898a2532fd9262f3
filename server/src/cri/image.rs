//! ImageService handlers.

use berth_proto::v1::image_service_server::ImageService;
use berth_proto::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};
use tonic::{Request, Response, Status};

use super::{CriService, now_nanos};
use crate::error::Error;
use crate::fsinfo;

#[tonic::async_trait]
impl ImageService for CriService {
    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let dir = self.config().image_store_dir();
        let usage = tokio::task::spawn_blocking(move || -> Result<FilesystemUsage, Error> {
            let usage = fsinfo::usage(&dir)
                .map_err(|e| Error::io(format!("measuring image store {}", dir.display()), e))?;
            let mountpoint = fsinfo::mountpoint_of(&dir)
                .map_err(|e| Error::io(format!("finding the mount of {}", dir.display()), e))?;
            Ok(FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: mountpoint.display().to_string(),
                }),
                used_bytes: Some(UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes_used,
                }),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("image fs measurement task failed: {e}")))??;
        // Writable layers live on the same filesystem as the image store, so kubelet sees
        // one filesystem (no split image/container fs).
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}
