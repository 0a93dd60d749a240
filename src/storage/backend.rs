//! The object-store clients for `s3://` and `az://` URLs: what `[storage.s3]` and
//! `[storage.azure]` set wins over the environment `object_store` reads (`AWS_*`,
//! `AZURE_*`), so a Kubernetes Secret can carry the credentials alone.

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};

use crate::config::{AzureConfig, S3Config};

pub(super) fn s3(bucket: &str, s3: &S3Config) -> object_store::Result<AmazonS3> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(v) = &s3.endpoint {
        b = b.with_endpoint(v);
    }
    if let Some(v) = &s3.region {
        b = b.with_region(v);
    }
    if let Some(v) = s3.allow_http {
        b = b.with_allow_http(v);
    }
    if let Some(v) = s3.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(v);
    }
    if let Some(v) = &s3.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &s3.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    b.build()
}

pub(super) fn azure(container: &str, az: &AzureConfig) -> object_store::Result<MicrosoftAzure> {
    let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container);
    if let Some(v) = &az.account {
        b = b.with_account(v);
    }
    if let Some(v) = &az.access_key {
        b = b.with_access_key(v);
    }
    if let Some(v) = &az.endpoint {
        b = b.with_endpoint(v.clone());
    }
    if let Some(v) = az.allow_http {
        b = b.with_allow_http(v);
    }
    if let Some(v) = az.use_emulator {
        b = b.with_use_emulator(v);
    }
    b.build()
}
