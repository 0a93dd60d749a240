//! OCI types and grammar: digests, repository names, references, media types and the
//! few manifest fields a mirror must read.
//!
//! Nothing here knows about HTTP, storage or upstreams; every other module builds on these
//! validated types so that no raw client string reaches a storage key or an upstream URL.

pub mod cosign;
pub mod digest;
pub mod index;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use manifest::{Descriptor, ManifestRefs};
pub use platform::Platform;
pub use reference::{NameError, Reference, RepoName, Tag};
