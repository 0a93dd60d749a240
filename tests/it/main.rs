//! Integration tests: real `docker-registry` upstreams, the real `archway` binary, real
//! `skopeo`. One test binary, so the suite links once.

mod support;

mod allocator;
mod cli;
mod client_auth;
mod clients;
mod cluster;
mod console;
mod dedup;
mod deploy;
mod errors;
mod faults;
mod gc;
mod hosted;
mod limits;
mod multiarch;
mod object_stores;
mod pull;
mod push;
mod redirects;
mod referrers;
mod reload;
mod routing;
mod rules;
mod shutdown;
mod signatures;
mod tags;
mod tls;
mod upstream_auth;
mod warm;
