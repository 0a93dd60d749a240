//! The configured upstreams as the services reach them: by a route's index, each with the
//! name it has in the store and in link records.

use std::sync::Arc;

use crate::routing::Route;
use crate::storage::records::Source;
use crate::upstream::Remote;

pub(crate) struct Upstreams {
    remotes: Vec<Arc<dyn Remote>>,
    /// Shared by every access time noted, so noting one allocates nothing.
    names: Vec<Arc<str>>,
}

impl Upstreams {
    /// In config order, so that a route's index names its upstream.
    pub(crate) fn new(remotes: Vec<Arc<dyn Remote>>) -> Upstreams {
        let names = remotes.iter().map(|r| r.name().into()).collect();
        Upstreams { remotes, names }
    }

    pub(crate) fn remote(&self, route: &Route) -> &Arc<dyn Remote> {
        &self.remotes[route.upstream]
    }

    /// The `i`th, in config order.
    pub(crate) fn at(&self, i: usize) -> &Arc<dyn Remote> {
        &self.remotes[i]
    }

    pub(crate) fn name(&self, route: &Route) -> &Arc<str> {
        &self.names[route.upstream]
    }

    /// How a link records that its content comes from `route`.
    pub(crate) fn source(&self, route: &Route) -> Source {
        Source {
            upstream: self.name(route).to_string(),
            repository: route.repo.to_string(),
        }
    }

    /// The route a link's recorded source names, if its upstream is still configured.
    pub(crate) fn route_of(&self, s: &Source) -> Option<Route> {
        Some(Route {
            upstream: self.names.iter().position(|n| **n == *s.upstream)?,
            repo: s.repository.parse().ok()?,
        })
    }
}
