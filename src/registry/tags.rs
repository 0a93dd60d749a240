//! Tags: what each tag pointed at when it was last checked upstream (in the store, fronted
//! by memory), and the upstream's tag lists, paginated where the upstream does not.

use std::sync::Arc;
use std::time::Duration;

use super::upstreams::Upstreams;
use super::{bounded, TagKey};
use crate::error::{Error, Result};
use crate::oci::{RepoName, Tag};
use crate::routing::Route;
use crate::storage::layout;
use crate::storage::records::TagRecord;
use crate::storage::Store;
use crate::upstream::TagPage;

/// A tag record as held in memory.
#[derive(Debug, Clone)]
pub(crate) struct TagState {
    pub(crate) record: TagRecord,
    /// When this replica should next ask the upstream (epoch millis). Usually
    /// `checked_at + tag_ttl`; pushed out after a stale serve so an outage is not hammered.
    pub(crate) revalidate_at: u64,
}

impl TagState {
    pub(crate) fn new(record: TagRecord, ttl: Duration) -> TagState {
        let revalidate_at = record.checked_at.saturating_add(ttl.as_millis() as u64);
        TagState {
            record,
            revalidate_at,
        }
    }

    pub(crate) fn fresh(&self, now: u64) -> bool {
        now < self.revalidate_at
    }
}

pub(crate) struct Tags {
    store: Store,
    upstreams: Arc<Upstreams>,
    ttl: Duration,
    memory: moka::future::Cache<TagKey, Arc<TagState>>,
}

pub(crate) fn key(route: &Route, tag: &Tag) -> TagKey {
    (route.upstream, route.repo.clone(), tag.clone())
}

impl Tags {
    /// `forget_after`, as for links: memory forgets tags another replica's collection may
    /// have removed.
    pub(crate) fn new(
        store: Store,
        upstreams: Arc<Upstreams>,
        ttl: Duration,
        forget_after: Option<Duration>,
    ) -> Tags {
        Tags {
            store,
            upstreams,
            ttl,
            memory: bounded(1_000_000, forget_after),
        }
    }

    /// The tag's state in memory, if any: the hot path, without the store.
    pub(crate) async fn in_memory(&self, route: &Route, tag: &Tag) -> Option<Arc<TagState>> {
        self.memory.get(&key(route, tag)).await
    }

    /// The tag's last known state: from memory, else from the store's record.
    pub(crate) async fn load(&self, route: &Route, tag: &Tag) -> Result<Option<Arc<TagState>>> {
        if let Some(s) = self.in_memory(route, tag).await {
            return Ok(Some(s));
        }
        let path = layout::tag(self.upstreams.name(route), &route.repo, tag);
        Ok(self
            .store
            .get_record::<TagRecord>(&path)
            .await?
            .map(|r| Arc::new(TagState::new(r, self.ttl))))
    }

    /// Trusts `state` from now on (its manifest was found), in memory only.
    pub(crate) async fn remember(&self, route: &Route, tag: &Tag, state: Arc<TagState>) {
        self.memory.insert(key(route, tag), state).await;
    }

    /// Records what the upstream said the tag points at, in the store and in memory.
    pub(crate) async fn record(&self, route: &Route, tag: &Tag, record: TagRecord) -> Result<()> {
        let path = layout::tag(self.upstreams.name(route), &route.repo, tag);
        self.store.put_record(&path, &record).await?;
        self.remember(route, tag, Arc::new(TagState::new(record, self.ttl)))
            .await;
        Ok(())
    }

    /// Keeps serving `state` without asking the upstream until `now + ttl`: after a stale
    /// serve, rather than hammering an upstream that is down.
    pub(crate) async fn trust_for_a_ttl(
        &self,
        route: &Route,
        tag: &Tag,
        state: &TagState,
        now: u64,
    ) {
        let mut st = state.clone();
        st.revalidate_at = now.saturating_add(self.ttl.as_millis() as u64);
        self.remember(route, tag, Arc::new(st)).await;
    }

    pub(crate) async fn forget(&self, route: &Route, tag: &Tag) {
        self.memory.invalidate(&key(route, tag)).await;
    }

    pub(crate) fn forget_all(&self) {
        self.memory.invalidate_all();
    }
}

/// One page of the upstream's tag list. `n` and `last` are the only parameters passed on;
/// when the upstream ignores them (distribution 2.8 does), the page is cut here, in the
/// spec's lexical order, with a `Link` to the next one.
pub(crate) async fn list(
    upstreams: &Upstreams,
    route: &Route,
    n: Option<u32>,
    last: Option<&Tag>,
) -> Result<TagPage> {
    let query = {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            q.append_pair("n", &n.to_string());
        }
        if let Some(l) = last {
            q.append_pair("last", l.as_str());
        }
        q.finish()
    };
    let page = upstreams
        .remote(route)
        .tags(&route.repo, &query)
        .await?
        .ok_or_else(|| {
            Error::NameUnknown(format!(
                "repository {} is unknown to upstream {}",
                route.repo,
                upstreams.name(route)
            ))
        })?;
    if n.is_none() && last.is_none() {
        return Ok(page);
    }
    Ok(paginate(page, &route.repo, n, last))
}

#[derive(serde::Deserialize, serde::Serialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

fn paginate(page: TagPage, repo: &RepoName, n: Option<u32>, last: Option<&Tag>) -> TagPage {
    let Ok(mut list) = serde_json::from_slice::<TagList>(&page.body) else {
        return page;
    };
    let mut tags = list.tags.take().unwrap_or_default();
    tags.sort();
    if let Some(l) = last {
        tags.retain(|t| t.as_str() > l.as_str());
    }
    let limit = n.map_or(usize::MAX, |n| n as usize);
    let more = tags.len() > limit;
    tags.truncate(limit);
    let link = match (&page.link, more, tags.last()) {
        (Some(l), _, _) => Some(l.clone()),
        (None, true, Some(last)) => Some(format!(
            "</v2/{repo}/tags/list?n={limit}&last={last}>; rel=\"next\""
        )),
        _ => None,
    };
    list.tags = Some(tags);
    match serde_json::to_vec(&list) {
        Ok(body) => TagPage {
            body: body.into(),
            link,
        },
        Err(_) => page,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing;

    fn record(checked_at: u64) -> TagRecord {
        TagRecord {
            digest: crate::oci::Digest::sha256_of(b"m"),
            media_type: "m".into(),
            size: 1,
            checked_at,
        }
    }

    #[tokio::test]
    async fn records_outlive_memory_and_freshness_follows_the_ttl() {
        let (store, _dir) = testing::memory_store();
        let upstreams = testing::upstreams(&["hub"]);
        let ttl = Duration::from_secs(60);
        let tags = Tags::new(store.clone(), upstreams.clone(), ttl, None);
        let route = Route {
            upstream: 0,
            repo: "app".parse().unwrap(),
        };
        let tag: Tag = "v1".parse().unwrap();
        assert!(tags.load(&route, &tag).await.unwrap().is_none());
        tags.record(&route, &tag, record(1_000)).await.unwrap();
        let st = tags.in_memory(&route, &tag).await.unwrap();
        assert!(st.fresh(60_999) && !st.fresh(61_000));

        // Another process: the record comes from the store, memory learns it only when told.
        let again = Tags::new(store, upstreams, ttl, None);
        assert!(again.in_memory(&route, &tag).await.is_none());
        let st = again.load(&route, &tag).await.unwrap().unwrap();
        assert_eq!(st.record, record(1_000));
        // A stale serve at 100 s trusts the old answer for another TTL.
        again.trust_for_a_ttl(&route, &tag, &st, 100_000).await;
        assert!(again.in_memory(&route, &tag).await.unwrap().fresh(159_999));
        again.forget(&route, &tag).await;
        assert!(again.in_memory(&route, &tag).await.is_none());
    }

    #[test]
    fn pages_are_cut_in_lexical_order() {
        let page = TagPage {
            body: br#"{"name":"app","tags":["c","a","b"]}"#.to_vec().into(),
            link: None,
        };
        let repo: RepoName = "app".parse().unwrap();
        let first = paginate(page.clone(), &repo, Some(2), None);
        assert_eq!(&first.body[..], br#"{"name":"app","tags":["a","b"]}"#);
        assert_eq!(
            first.link.as_deref(),
            Some("</v2/app/tags/list?n=2&last=b>; rel=\"next\"")
        );
        let last: Tag = "b".parse().unwrap();
        let second = paginate(page, &repo, Some(2), Some(&last));
        assert_eq!(&second.body[..], br#"{"name":"app","tags":["c"]}"#);
        assert_eq!(second.link, None);
    }
}
