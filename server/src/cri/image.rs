//! ImageService handlers.

use std::collections::HashMap;

use berth_image::{Auth, Image as StoredImage};
use berth_proto::v1::image_service_server::ImageService;
use berth_proto::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};

use super::CriService;
use crate::error::Error;
use crate::host::clock::now_nanos;
use crate::host::fsinfo;

/// The CRI view of a stored image. `spec.image` is the id, as containerd reports it.
/// `pinned` (an `image.pinned_images` entry names it) tells kubelet's image GC to
/// leave it alone.
fn to_cri(image: &StoredImage, pinned: bool) -> Image {
    Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: image.uid().map(|value| Int64Value { value }),
        username: image.username(),
        spec: Some(ImageSpec {
            image: image.id.to_string(),
            ..Default::default()
        }),
        pinned,
    }
}

fn auth(config: Option<AuthConfig>) -> Auth {
    match config {
        None => Auth::anonymous(),
        Some(a) => Auth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            registry_token: a.registry_token,
            // A refresh token, exchanged at the registry's token service.
            identity_token: a.identity_token,
            // The store sends these credentials only to this registry.
            server_address: a.server_address,
        },
    }
}

fn image_name(spec: Option<ImageSpec>) -> Result<String, Error> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument("image.image is required".into()));
    }
    Ok(name)
}

impl CriService {
    /// Images matching a `ListImages`/`StreamImages` filter.
    fn filtered_images(
        &self,
        filter: Option<berth_proto::v1::ImageFilter>,
    ) -> Result<Vec<Image>, Error> {
        let name = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match name {
            Some(name) => self.shared.images.status(&name)?.into_iter().collect(),
            None => self.shared.images.list(),
        };
        let store = &self.shared.images;
        Ok(images
            .iter()
            .map(|i| to_cri(i, store.pinned_by(i).is_some()))
            .collect())
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image)?;
        let started = std::time::Instant::now();
        let pulled = self.shared.images.pull(&name, &auth(req.auth)).await;
        crate::prom::global().observe_pull(
            pulled.is_ok(),
            started.elapsed(),
            pulled.as_ref().ok().map(|i| i.size),
        );
        let image = pulled.map_err(Error::from)?;
        Ok(Response::new(PullImageResponse {
            image_ref: image.id.to_string(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image)?;
        let Some(image) = self.shared.images.status(&name).map_err(Error::from)? else {
            // An unknown image is not an error: kubelet pulls it next.
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config = self
                .shared
                .images
                .config_json(&image)
                .map_err(Error::from)?;
            info.insert(
                "info".to_owned(),
                serde_json::json!({
                    "imageSpec": config,
                    "manifestDigest": image.manifest_digest.to_string(),
                    "chainIDs": image.layers.iter().map(|l| l.chain_id.to_string()).collect::<Vec<_>>(),
                    "snapshotDirs": self.shared.images.snapshot_dirs(&image),
                })
                .to_string(),
            );
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri(
                &image,
                self.shared.images.pinned_by(&image).is_some(),
            )),
            info,
        }))
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let images = self.filtered_images(request.into_inner().filter)?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        request: Request<berth_proto::v1::StreamImagesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<berth_proto::v1::StreamImagesResponse>>, Status>
    {
        let images = self.filtered_images(request.into_inner().filter)?;
        Ok(Response::new(super::chunked(images, |images| {
            berth_proto::v1::StreamImagesResponse { images }
        })))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = image_name(request.into_inner().image)?;
        // Removing an unknown image is OK (kubelet's image GC races with itself).
        // A pinned one is refused (FailedPrecondition naming the config entry):
        // kubelet's GC never asks (it skips pinned images), so this only stops a
        // hand-typed `crictl rmi` of an image the node is configured to keep.
        self.shared
            .images
            .remove(&name)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RemoveImageResponse {}))
    }

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
        .map_err(Error::task("image fs measurement"))??;
        // Writable layers live on the same filesystem as the image store, so kubelet sees
        // one filesystem (no split image/container fs).
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}
