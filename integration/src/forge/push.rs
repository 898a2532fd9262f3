//! Pushing built images to a registry over the OCI distribution API.

use anyhow::{Context, bail};

use super::{BuiltImage, OCI_INDEX, sha256};

/// Pushes images to a registry over the distribution API.
#[derive(Debug, Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    basic: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for the registry at `base` (`http://127.0.0.1:5000`).
    pub fn new(base: &str, basic: Option<(String, String)>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            basic,
        })
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Uploads a blob unless the registry has it: POST to start, PATCH the bytes,
    /// PUT with the digest to finish.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let head = self
            .auth(
                self.http
                    .head(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting upload to {repo}: HTTP {}", start.status());
        }
        let location = self.location(&start)?;
        let patch = self
            .auth(self.http.patch(&location))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if patch.status() != reqwest::StatusCode::ACCEPTED {
            bail!("uploading {digest} to {repo}: HTTP {}", patch.status());
        }
        let location = self.location(&patch)?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .auth(self.http.put(format!("{location}{sep}digest={digest}")))
            .header("Content-Length", "0")
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            let status = put.status();
            let body = put.text().await.unwrap_or_default();
            bail!("finishing upload of {digest} to {repo}: HTTP {status}: {body}");
        }
        Ok(digest)
    }

    fn location(&self, resp: &reqwest::Response) -> anyhow::Result<String> {
        let loc = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .context("upload response has no Location")?;
        Ok(if loc.starts_with("http") {
            loc.to_owned()
        } else {
            format!("{}{loc}", self.base)
        })
    }

    /// Uploads a manifest (or index) document under `reference` (tag or digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let resp = self
            .auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("pushing manifest {repo}:{reference}: HTTP {status}: {text}");
        }
        Ok(())
    }

    /// Pushes a whole image under `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        self.push_blob(repo, &image.config).await?;
        match &image.index {
            None => {
                self.push_manifest(repo, tag, &image.manifest_media_type, &image.manifest)
                    .await
            }
            Some(index) => {
                if let Some(decoy) = &image.decoy {
                    self.push_manifest(repo, &sha256(decoy), &image.manifest_media_type, decoy)
                        .await?;
                }
                self.push_manifest(
                    repo,
                    &image.manifest_digest,
                    &image.manifest_media_type,
                    &image.manifest,
                )
                .await?;
                self.push_manifest(repo, tag, OCI_INDEX, index).await
            }
        }
    }
}
