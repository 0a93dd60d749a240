//! The client side of the internal endpoint: streaming a blob from the replica that is
//! filling it, from an offset on. The bytes are not trusted more for coming from a peer: the
//! follower's own fill hashes them like any other source.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::header::AUTHORIZATION;
use http::StatusCode;
use url::Url;

use super::{auth, Cluster, FILL_PATH, SIZE_HEADER};
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::oci::Digest;

/// Why a peer could not serve the fill.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {peer} cannot be reached")]
    Unreachable {
        peer: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer {peer} answered {status}")]
    Status { peer: String, status: StatusCode },
    #[error("peer address {0:?} is not a URL")]
    Address(String),
}

/// A fill as a peer streams it.
pub struct PeerStream {
    /// The whole blob's size, when the peer knows it.
    pub size: Option<u64>,
    /// The bytes from the offset asked for.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

/// The fill of `d` at `peer` from `offset` on. `Ok(None)`: the peer has no fill of it and
/// no copy (it finished and the store has it, or it failed).
pub async fn open(
    cluster: &Cluster,
    peer: &str,
    d: &Digest,
    offset: u64,
) -> std::result::Result<Option<PeerStream>, PeerError> {
    let base = Url::parse(peer).map_err(|_| PeerError::Address(peer.to_string()))?;
    let path = format!("{FILL_PATH}{d}?offset={offset}");
    let url = base
        .join(&path)
        .map_err(|_| PeerError::Address(peer.to_string()))?;
    let authz = auth::authorization(&cluster.secret, now_millis() / 1000, "GET", &path);
    let resp = cluster
        .http
        .get(url)
        .header(AUTHORIZATION, authz)
        .send()
        .await
        .map_err(|e| PeerError::Unreachable {
            peer: peer.to_string(),
            source: e.without_url(),
        })?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => {
            return Err(PeerError::Status {
                peer: peer.to_string(),
                status,
            })
        }
    }
    let size = resp
        .headers()
        .get(SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let counter = cluster.metrics.peer_bytes.clone();
    let stream = resp
        .bytes_stream()
        .map_err(|e| {
            Error::io(
                "the peer's transfer failed",
                std::io::Error::other(e.without_url()),
            )
        })
        .inspect_ok(move |b| counter.inc_by(b.len() as u64))
        .boxed();
    Ok(Some(PeerStream { size, stream }))
}
