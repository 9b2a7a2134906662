//! Uploading a finished backup to `[backup.s3]`: one object per artifact at
//! `<prefix>/<id>/<artifact file>`, each with its SHA-256 as object metadata
//! (`x-amz-meta-sha256`), and `manifest.json` last — its presence marks a complete upload.
//!
//! The backup is verified before anything is sent (damaged data is never uploaded as if it were
//! good). Artifacts stream from disk: up to [`MULTIPART_THRESHOLD`] in one `PutObject` from
//! `ByteStream::from_path`; larger ones as a multipart upload of [`PART_SIZE`] parts, each read
//! from its offset of the file — so memory does not grow with the artifact, and a failed
//! multipart upload is aborted (no orphaned parts billed).
//!
//! TLS: the SDK with `default-features = false`, the `rustls` + `ring` HTTP client passed
//! explicitly (one crypto provider in the whole binary; see TOOLCHAIN.md), as the traffic switch
//! does. Credentials: the default AWS chain (environment, then `profile` — read from
//! `credentials_file` when set instead of `~/.aws/credentials` — then the instance role).

use std::path::Path;

// aws-config names these through deprecated aliases of aws-runtime's types; its own
// `profile_files` takes them, and depending on aws-runtime directly for the new names would pin
// one more crate to the SDK's release train.
#[allow(deprecated)]
use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tokio_util::sync::CancellationToken;

use super::blocking;
use super::verify::artifact_path;
use super::{Artifact, MANIFEST, read_manifest};
use crate::config::{AgentConfig, BackupS3Config};
use crate::error::AgentError;

/// Artifacts larger than this are sent as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = PART_SIZE;
/// Size of a multipart part (S3's minimum is 5 MiB; at most 10 000 parts: 160 GiB per artifact).
pub const PART_SIZE: u64 = 16 * 1024 * 1024;

/// One uploaded object.
#[derive(Clone, Debug)]
pub struct Uploaded {
    /// Its key.
    pub key: String,
    /// Its length.
    pub size: u64,
    /// Its SHA-256 (hex), also in its metadata.
    pub sha256: String,
    /// Sent as a multipart upload.
    pub multipart: bool,
}

/// What an upload sent.
#[derive(Clone, Debug, Default)]
pub struct UploadReport {
    /// The bucket.
    pub bucket: String,
    /// `<prefix>/<id>/`.
    pub key_prefix: String,
    /// Every object, `manifest.json` last.
    pub objects: Vec<Uploaded>,
    /// Sum of the sizes.
    pub bytes: u64,
}

/// Uploads backup `id` of `config`'s folder, sharing the folder's lock with other readers.
///
/// # Errors
/// `FailedPrecondition` without `[backup.s3]`; as [`upload`].
pub async fn upload_backup(
    config: &AgentConfig,
    config_path: &Path,
    id: &str,
    cancel: &CancellationToken,
) -> Result<UploadReport, AgentError> {
    let s3 = config.backup.s3.as_ref().ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "no [backup.s3] section in {}: add bucket and region to upload backups",
            config_path.display()
        ))
    })?;
    let backup = super::existing(&config.backup.dir, id)?;
    let _lock = super::lock(&config.backup.dir, false)?;
    upload(s3, &backup, cancel).await
}

/// Uploads the finished backup in folder `backup`; the caller holds the folder's lock.
///
/// # Errors
/// `DataLoss` when the backup does not verify (nothing is sent); `Unavailable` naming the bucket,
/// key and the SDK's reason when a call fails; `Cancelled`.
pub async fn upload(
    s3: &BackupS3Config,
    backup: &Path,
    cancel: &CancellationToken,
) -> Result<UploadReport, AgentError> {
    let m = read_manifest(backup)?;
    let verdict = {
        let b = backup.to_path_buf();
        blocking(cancel, move |c| super::verify::verify(&b, c)).await?
    };
    verdict.into_result()?;
    let client = client(s3).await;
    let key_prefix = if s3.prefix.is_empty() {
        format!("{}/", m.id)
    } else {
        format!("{}/{}/", s3.prefix, m.id)
    };
    let mut report = UploadReport {
        bucket: s3.bucket.clone(),
        key_prefix: key_prefix.clone(),
        ..UploadReport::default()
    };
    let manifest = Artifact {
        kind: super::ArtifactKind::File,
        name: MANIFEST.into(),
        file: MANIFEST.into(),
        size: 0,
        sha256: String::new(),
        source_path: None,
        mode: None,
        server_version: None,
        entries: None,
        root_mtime_ns: None,
    };
    for a in m.artifacts.iter().chain([&manifest]) {
        let path = artifact_path(backup, a)?;
        let (size, sha256) = if a.file == MANIFEST {
            let p = path.clone();
            let (n, d) = blocking(cancel, move |c| super::verify::hash_file(&p, c)).await?;
            (n, d.to_string())
        } else {
            (a.size, a.sha256.clone())
        };
        let key = format!("{key_prefix}{}", a.file);
        let multipart = size > MULTIPART_THRESHOLD;
        if multipart {
            put_multipart(&client, &s3.bucket, &key, &path, size, &sha256, cancel).await?;
        } else {
            tokio::select! {
                r = put_whole(&client, &s3.bucket, &key, &path, size, &sha256) => r?,
                () = cancel.cancelled() => return Err(AgentError::Cancelled),
            }
        }
        tracing::info!(bucket = %s3.bucket, %key, size, multipart, "uploaded");
        report.bytes += size;
        report.objects.push(Uploaded {
            key,
            size,
            sha256,
            multipart,
        });
    }
    Ok(report)
}

/// An S3 client for `[backup.s3]`.
#[allow(deprecated)] // ProfileFiles / ProfileFileKind, see the `use` above.
pub async fn client(s3: &BackupS3Config) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(s3.region.clone()))
        .http_client(http_client);
    if let Some(url) = &s3.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(file) = &s3.credentials_file {
        // Through the loader, not a ProfileFileCredentialsProvider of our own: that one builds
        // an internal client without our explicit HTTP client and panics at its first call.
        let files = ProfileFiles::builder()
            .with_file(ProfileFileKind::Credentials, file)
            .build();
        loader = loader.profile_files(files);
    }
    if let Some(profile) = &s3.profile {
        loader = loader.profile_name(profile.clone());
    }
    let shared = loader.load().await;
    // A custom endpoint (an S3-compatible store, a local stand-in) rarely has per-bucket DNS names.
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(s3.endpoint_url.is_some())
        .build();
    Client::from_conf(conf)
}

fn failed(op: &str, bucket: &str, key: &str, e: impl std::error::Error) -> AgentError {
    AgentError::Unavailable(format!(
        "S3 {op} s3://{bucket}/{key}: {}",
        DisplayErrorContext(e)
    ))
}

async fn put_whole(
    c: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    sha256: &str,
) -> Result<(), AgentError> {
    let body = ByteStream::from_path(path)
        .await
        .map_err(|e| AgentError::io("open", path, std::io::Error::other(e)))?;
    c.put_object()
        .bucket(bucket)
        .key(key)
        .content_length(i64::try_from(size).unwrap_or(i64::MAX))
        .metadata("sha256", sha256)
        .body(body)
        .send()
        .await
        .map_err(|e| failed("PutObject", bucket, key, e))?;
    Ok(())
}

async fn put_multipart(
    c: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    sha256: &str,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let created = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .metadata("sha256", sha256)
        .send()
        .await
        .map_err(|e| failed("CreateMultipartUpload", bucket, key, e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| {
            AgentError::Unavailable(format!(
                "S3 CreateMultipartUpload s3://{bucket}/{key}: no upload id"
            ))
        })?
        .to_string();
    let parts = async {
        let mut parts = Vec::new();
        let (mut offset, mut number) = (0u64, 1i32);
        while offset < size {
            let len = PART_SIZE.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| AgentError::io("read", path, std::io::Error::other(e)))?;
            let part = c
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                .body(body)
                .send()
                .await
                .map_err(|e| failed("UploadPart", bucket, key, e))?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(part.e_tag().map(String::from))
                    .part_number(number)
                    .build(),
            );
            offset += len;
            number += 1;
        }
        c.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| failed("CompleteMultipartUpload", bucket, key, e))?;
        Ok(())
    };
    let result = tokio::select! {
        r = parts => r,
        () = cancel.cancelled() => Err(AgentError::Cancelled),
    };
    if result.is_err() {
        let abort = c
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(e) = abort {
            tracing::warn!(%key, error = %DisplayErrorContext(e), "could not abort the multipart upload");
        }
    }
    result
}
