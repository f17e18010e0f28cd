//! The hot cache shared by the services: a [`Cache`] trait, a Redis implementation for
//! production and an in-process one for the embedded default.
//!
//! The cache is never the system of record. Its operations cannot fail from the caller's point
//! of view: an unreachable, slow or paused Redis turns into a miss (logged), so losing Redis
//! costs speed, never answers.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Which implementation is behind a [`Cache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    Redis,
    InProcess,
}

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value under `key`, or `None` on a miss or when the cache cannot be reached.
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key` for at most `ttl`.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration);
    /// Removes `key`; callers invalidate after every committed change of what it holds.
    async fn delete(&self, key: &str);
    /// Sets `fields` of the hash under `key` (other fields stay: several services write one
    /// customer's hash) and makes the whole hash expire after `ttl`.
    async fn hash_set(&self, key: &str, fields: &[(&str, Vec<u8>)], ttl: Duration);
    /// One field of the hash under `key`; `None` on a miss.
    async fn hash_get(&self, key: &str, field: &str) -> Option<Vec<u8>>;
    /// Every field of the hash under `key`, sorted by name; empty on a miss.
    async fn hash_get_all(&self, key: &str) -> Vec<(String, Vec<u8>)>;
    /// Removes `fields` from the hash under `key`.
    async fn hash_delete(&self, key: &str, fields: &[&str]);
    /// Sets `set` and removes `delete` in the hash under `key` only if its `version_field` is
    /// absent or lower than `version`, then records `version` and the `ttl`; all at once. Writers
    /// that commit in version order but write the cache after their commits can then never
    /// leave an older state on top of a newer one. Returns whether it applied.
    async fn hash_update_if_newer(
        &self,
        key: &str,
        version_field: &str,
        version: i64,
        set: &[(&str, Vec<u8>)],
        delete: &[&str],
        ttl: Duration,
    ) -> bool;
    /// [`Cache::hash_update_if_newer`] for many keys, each judged on its own; on Redis one
    /// round trip for all of them, because writers such as a score run update thousands of
    /// hashes per commit. Returns how many applied.
    async fn hash_update_many_if_newer(
        &self,
        version_field: &str,
        updates: &[VersionedUpdate<'_>],
        ttl: Duration,
    ) -> usize {
        let mut applied = 0;
        for update in updates {
            if self
                .hash_update_if_newer(
                    &update.key,
                    version_field,
                    update.version,
                    &update.set,
                    update.delete,
                    ttl,
                )
                .await
            {
                applied += 1;
            }
        }
        applied
    }
    fn backend(&self) -> CacheBackend;
}

/// One hash's part of [`Cache::hash_update_many_if_newer`].
#[derive(Debug, Clone)]
pub struct VersionedUpdate<'a> {
    pub key: String,
    pub version: i64,
    pub set: Vec<(&'a str, Vec<u8>)>,
    pub delete: &'a [&'a str],
}

/// The key of one customer's entry of a given kind, e.g. `crm:customer:{acme/0193…}`.
///
/// The braces are a Redis Cluster hash tag: every key of one customer lands in one slot, and
/// tenants spread across the cluster. The tenant leads the tag, as it leads every table.
pub fn customer_key(kind: &str, tenant: &str, customer_id: &str) -> String {
    format!("crm:{kind}:{{{tenant}/{customer_id}}}")
}

#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL is not a valid Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

/// Redis through one multiplexed [`ConnectionManager`] shared by every request.
///
/// The first connection is made in the background and retried until it succeeds, so a service
/// starts and stays ready while Redis is down; the manager reconnects by itself afterwards.
#[derive(Clone)]
pub struct RedisCache {
    connection: Arc<OnceLock<ConnectionManager>>,
    operation_timeout: Duration,
}

impl RedisCache {
    /// Checks the URL now and starts connecting in the background. Must run inside a Tokio
    /// runtime.
    pub fn connect(url: &str, operation_timeout: Duration) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(|error| InvalidRedisUrl(error.to_string()))?;
        let connection = Arc::new(OnceLock::new());
        let slot = Arc::clone(&connection);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(operation_timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(operation_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        tracing::info!("redis cache connected");
                        let _ = slot.set(manager);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "redis cache unreachable, serving without it");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(Self {
            connection,
            operation_timeout,
        })
    }

    /// Whether the first connection has been made.
    pub fn is_connected(&self) -> bool {
        self.connection.get().is_some()
    }

    /// Waits up to `limit` for the first connection (tests and start-up warm-up).
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while !self.is_connected() {
            if started.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn manager(&self) -> Option<ConnectionManager> {
        self.connection.get().cloned()
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut manager = self.manager()?;
        match tokio::time::timeout(self.operation_timeout, manager.get::<_, Option<Vec<u8>>>(key)).await {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis cache get failed, treating as a miss");
                None
            }
            Err(_) => {
                tracing::warn!("redis cache get timed out, treating as a miss");
                None
            }
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let Some(mut manager) = self.manager() else { return };
        let seconds = ttl.as_secs().max(1);
        match tokio::time::timeout(
            self.operation_timeout,
            manager.set_ex::<_, _, ()>(key, value, seconds),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "redis cache set failed"),
            Err(_) => tracing::warn!("redis cache set timed out"),
        }
    }

    async fn delete(&self, key: &str) {
        let Some(mut manager) = self.manager() else { return };
        match tokio::time::timeout(self.operation_timeout, manager.del::<_, ()>(key)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "redis cache delete failed"),
            Err(_) => tracing::warn!("redis cache delete timed out"),
        }
    }

    async fn hash_set(&self, key: &str, fields: &[(&str, Vec<u8>)], ttl: Duration) {
        let Some(mut manager) = self.manager() else { return };
        if fields.is_empty() {
            return;
        }
        // One round trip, applied atomically: the fields never exist without their expiry.
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        pipeline.hset_multiple(key, fields).ignore();
        pipeline
            .expire(key, i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX))
            .ignore();
        match tokio::time::timeout(self.operation_timeout, pipeline.query_async::<()>(&mut manager)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "redis cache hash set failed"),
            Err(_) => tracing::warn!("redis cache hash set timed out"),
        }
    }

    async fn hash_get(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        let mut manager = self.manager()?;
        match tokio::time::timeout(
            self.operation_timeout,
            manager.hget::<_, _, Option<Vec<u8>>>(key, field),
        )
        .await
        {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis cache hash get failed, treating as a miss");
                None
            }
            Err(_) => {
                tracing::warn!("redis cache hash get timed out, treating as a miss");
                None
            }
        }
    }

    async fn hash_get_all(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        let Some(mut manager) = self.manager() else {
            return Vec::new();
        };
        match tokio::time::timeout(
            self.operation_timeout,
            manager.hgetall::<_, std::collections::BTreeMap<String, Vec<u8>>>(key),
        )
        .await
        {
            Ok(Ok(fields)) => fields.into_iter().collect(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis cache hash read failed, treating as a miss");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("redis cache hash read timed out, treating as a miss");
                Vec::new()
            }
        }
    }

    async fn hash_delete(&self, key: &str, fields: &[&str]) {
        let Some(mut manager) = self.manager() else { return };
        if fields.is_empty() {
            return;
        }
        match tokio::time::timeout(self.operation_timeout, manager.hdel::<_, _, ()>(key, fields)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "redis cache hash delete failed"),
            Err(_) => tracing::warn!("redis cache hash delete timed out"),
        }
    }

    async fn hash_update_if_newer(
        &self,
        key: &str,
        version_field: &str,
        version: i64,
        set: &[(&str, Vec<u8>)],
        delete: &[&str],
        ttl: Duration,
    ) -> bool {
        let Some(mut manager) = self.manager() else {
            return false;
        };
        let mut invocation = versioned_update_script().key(key);
        invocation
            .arg(version_field)
            .arg(version)
            .arg(ttl.as_secs().max(1))
            .arg(set.len());
        for (field, value) in set {
            invocation.arg(*field).arg(value.as_slice());
        }
        for field in delete {
            invocation.arg(*field);
        }
        match tokio::time::timeout(
            self.operation_timeout,
            invocation.invoke_async::<i64>(&mut manager),
        )
        .await
        {
            Ok(Ok(applied)) => applied == 1,
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis cache versioned hash update failed");
                false
            }
            Err(_) => {
                tracing::warn!("redis cache versioned hash update timed out");
                false
            }
        }
    }

    async fn hash_update_many_if_newer(
        &self,
        version_field: &str,
        updates: &[VersionedUpdate<'_>],
        ttl: Duration,
    ) -> usize {
        if updates.is_empty() {
            return 0;
        }
        let Some(mut manager) = self.manager() else {
            return 0;
        };
        let script = versioned_update_script();
        let invocations: Vec<redis::ScriptInvocation<'_>> = updates
            .iter()
            .map(|update| {
                let mut invocation = script.key(&update.key);
                invocation
                    .arg(version_field)
                    .arg(update.version)
                    .arg(ttl.as_secs().max(1))
                    .arg(update.set.len());
                for (field, value) in &update.set {
                    invocation.arg(*field).arg(value.as_slice());
                }
                for field in update.delete {
                    invocation.arg(*field);
                }
                invocation
            })
            .collect();
        // The script is loaded first in the same pipeline, so EVALSHA never meets NOSCRIPT
        // (after a Redis restart, or on a replica promoted since).
        let mut pipeline = redis::pipe();
        pipeline.load_script(script).ignore();
        for invocation in &invocations {
            pipeline.invoke_script(invocation);
        }
        // The whole pipeline gets the budget of one operation per 100 hashes, at least one.
        let budget = self
            .operation_timeout
            .saturating_mul(u32::try_from(updates.len().div_ceil(100)).unwrap_or(u32::MAX));
        match tokio::time::timeout(budget, pipeline.query_async::<Vec<i64>>(&mut manager)).await {
            Ok(Ok(results)) => results.into_iter().filter(|applied| *applied == 1).count(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis cache versioned hash updates failed");
                0
            }
            Err(_) => {
                tracing::warn!("redis cache versioned hash updates timed out");
                0
            }
        }
    }

    fn backend(&self) -> CacheBackend {
        CacheBackend::Redis
    }
}

/// What the in-process cache holds under a key: a value, or a hash of fields.
#[derive(Clone)]
enum LocalValue {
    Bytes(Arc<[u8]>),
    Hash(Arc<std::collections::BTreeMap<String, Arc<[u8]>>>),
}

/// The server-side half of [`Cache::hash_update_if_newer`]: compare, write and expire in one
/// step. ARGV: version field, version, ttl seconds, number of pairs, the pairs, then the fields
/// to delete.
fn versioned_update_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local version = tonumber(ARGV[2])
if current ~= nil and current >= version then return 0 end
local pairs_count = tonumber(ARGV[4])
local set = {ARGV[1], ARGV[2]}
for i = 0, pairs_count - 1 do
  set[#set + 1] = ARGV[5 + 2 * i]
  set[#set + 1] = ARGV[6 + 2 * i]
end
redis.call('HSET', KEYS[1], unpack(set))
for i = 5 + 2 * pairs_count, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
",
        )
    })
}

#[derive(Clone)]
struct LocalEntry {
    value: LocalValue,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, LocalEntry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &LocalEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &LocalEntry,
        _updated_at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl LocalCache {
    fn hash_of(&self, key: &str) -> Option<Arc<std::collections::BTreeMap<String, Arc<[u8]>>>> {
        match self.entries.get(key)?.value {
            LocalValue::Hash(fields) => Some(fields),
            LocalValue::Bytes(_) => None,
        }
    }
}

/// The embedded default: a bounded in-process cache (moka) with a TTL per entry.
#[derive(Clone)]
pub struct LocalCache {
    entries: moka::sync::Cache<String, LocalEntry>,
}

impl LocalCache {
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

#[async_trait]
impl Cache for LocalCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.entries.get(key)?.value {
            LocalValue::Bytes(value) => Some(value.to_vec()),
            LocalValue::Hash(_) => None,
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        self.entries.insert(
            key.to_owned(),
            LocalEntry {
                value: LocalValue::Bytes(Arc::from(value)),
                ttl,
            },
        );
    }

    async fn delete(&self, key: &str) {
        self.entries.invalidate(key);
    }

    async fn hash_set(&self, key: &str, fields: &[(&str, Vec<u8>)], ttl: Duration) {
        // Upserts are atomic per key, so concurrent writers of one hash both land.
        self.entries.entry(key.to_owned()).and_upsert_with(|existing| {
            let mut map = match existing.map(|entry| entry.into_value().value) {
                Some(LocalValue::Hash(map)) => (*map).clone(),
                _ => std::collections::BTreeMap::new(),
            };
            for (field, value) in fields {
                map.insert((*field).to_owned(), Arc::from(value.as_slice()));
            }
            LocalEntry {
                value: LocalValue::Hash(Arc::new(map)),
                ttl,
            }
        });
    }

    async fn hash_get(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        self.hash_of(key)?.get(field).map(|value| value.to_vec())
    }

    async fn hash_update_if_newer(
        &self,
        key: &str,
        version_field: &str,
        version: i64,
        set: &[(&str, Vec<u8>)],
        delete: &[&str],
        ttl: Duration,
    ) -> bool {
        use moka::ops::compute::Op;
        let outcome = self.entries.entry(key.to_owned()).and_compute_with(|existing| {
            let mut map = match existing.map(|entry| entry.into_value().value) {
                Some(LocalValue::Hash(map)) => (*map).clone(),
                _ => std::collections::BTreeMap::new(),
            };
            let current = map
                .get(version_field)
                .and_then(|value| std::str::from_utf8(value).ok()?.parse::<i64>().ok());
            if current.is_some_and(|current| current >= version) {
                return Op::Nop;
            }
            map.insert(
                version_field.to_owned(),
                Arc::from(version.to_string().as_bytes()),
            );
            for (field, value) in set {
                map.insert((*field).to_owned(), Arc::from(value.as_slice()));
            }
            for field in delete {
                map.remove(*field);
            }
            Op::Put(LocalEntry {
                value: LocalValue::Hash(Arc::new(map)),
                ttl,
            })
        });
        matches!(
            outcome,
            moka::ops::compute::CompResult::Inserted(_) | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    async fn hash_get_all(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        self.hash_of(key)
            .map(|fields| {
                fields
                    .iter()
                    .map(|(field, value)| (field.clone(), value.to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn hash_delete(&self, key: &str, fields: &[&str]) {
        let _ = self.entries.entry(key.to_owned()).and_compute_with(|existing| {
            use moka::ops::compute::Op;
            match existing.map(|entry| entry.into_value()) {
                Some(LocalEntry {
                    value: LocalValue::Hash(map),
                    ttl,
                }) => {
                    let mut map = (*map).clone();
                    for field in fields {
                        map.remove(*field);
                    }
                    if map.is_empty() {
                        Op::Remove
                    } else {
                        Op::Put(LocalEntry {
                            value: LocalValue::Hash(Arc::new(map)),
                            ttl,
                        })
                    }
                }
                _ => Op::Nop,
            }
        });
    }

    fn backend(&self) -> CacheBackend {
        CacheBackend::InProcess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hash_round_trip(cache: &dyn Cache, key: &str) {
        assert!(cache.hash_get_all(key).await.is_empty());
        let ttl = Duration::from_secs(30);
        cache
            .hash_set(
                key,
                &[("rfm", b"545".to_vec()), ("stage", b"FORMATION".to_vec())],
                ttl,
            )
            .await;
        cache.hash_set(key, &[("tier", b"gold".to_vec())], ttl).await;
        assert_eq!(cache.hash_get(key, "rfm").await.as_deref(), Some(&b"545"[..]));
        let all = cache.hash_get_all(key).await;
        let names: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["rfm", "stage", "tier"]);
        // Versioned updates never go back.
        assert!(
            cache
                .hash_update_if_newer(key, "rev", 5, &[("stage", b"STABILITY".to_vec())], &[], ttl)
                .await
        );
        assert!(
            !cache
                .hash_update_if_newer(key, "rev", 4, &[("stage", b"OLD".to_vec())], &[], ttl)
                .await
        );
        assert_eq!(
            cache.hash_get(key, "stage").await.as_deref(),
            Some(&b"STABILITY"[..])
        );
        assert!(
            cache
                .hash_update_if_newer(key, "rev", 6, &[], &["stage"], ttl)
                .await
        );
        assert_eq!(cache.hash_get(key, "stage").await, None);
        assert_eq!(cache.hash_get(key, "rev").await.as_deref(), Some(&b"6"[..]));
        cache.hash_delete(key, &["rfm", "stage"]).await;
        assert_eq!(cache.hash_get(key, "rfm").await, None);
        assert_eq!(cache.hash_get(key, "tier").await.as_deref(), Some(&b"gold"[..]));
        cache.delete(key).await;
        assert!(cache.hash_get_all(key).await.is_empty());

        // Many at once: each key judged on its own version.
        let (first, second) = (format!("{key}-1"), format!("{key}-2"));
        cache
            .hash_update_if_newer(&second, "rev", 9, &[("stage", b"NEWER".to_vec())], &[], ttl)
            .await;
        let updates = [
            VersionedUpdate {
                key: first.clone(),
                version: 3,
                set: vec![("stage", b"FORMATION".to_vec())],
                delete: &[],
            },
            VersionedUpdate {
                key: second.clone(),
                version: 8,
                set: vec![("stage", b"OLDER".to_vec())],
                delete: &[],
            },
        ];
        assert_eq!(cache.hash_update_many_if_newer("rev", &updates, ttl).await, 1);
        assert_eq!(
            cache.hash_get(&first, "stage").await.as_deref(),
            Some(&b"FORMATION"[..])
        );
        assert_eq!(
            cache.hash_get(&second, "stage").await.as_deref(),
            Some(&b"NEWER"[..])
        );
        cache.delete(&first).await;
        cache.delete(&second).await;
    }

    async fn round_trip(cache: &dyn Cache, key: &str) {
        assert_eq!(cache.get(key).await, None);
        cache.set(key, b"value", Duration::from_secs(30)).await;
        assert_eq!(cache.get(key).await.as_deref(), Some(&b"value"[..]));
        cache.delete(key).await;
        assert_eq!(cache.get(key).await, None);
    }

    fn unique_key() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        customer_key("test", "cache-tests", &format!("{}-{nanos}", std::process::id()))
    }

    #[test]
    fn customer_keys_are_hash_tagged_by_tenant_and_customer() {
        assert_eq!(customer_key("score", "acme", "42"), "crm:score:{acme/42}");
    }

    #[tokio::test]
    async fn local_cache_round_trips_and_expires() {
        let cache = LocalCache::new(100);
        round_trip(&cache, "k").await;
        hash_round_trip(&cache, "h").await;
        cache.set("short", b"v", Duration::from_millis(50)).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("short").await, None);
    }

    /// Needs a real Redis: `REDIS_URL`. Skips without it, except under CI where it fails.
    #[tokio::test]
    async fn redis_cache_round_trips() {
        let Ok(url) = std::env::var("REDIS_URL") else {
            assert!(std::env::var("CI").is_err(), "REDIS_URL must be set under CI");
            eprintln!("skipping: REDIS_URL is not set");
            return;
        };
        let cache = RedisCache::connect(&url, Duration::from_millis(500)).unwrap();
        assert!(
            cache.wait_connected(Duration::from_secs(5)).await,
            "redis at {url} did not connect"
        );
        round_trip(&cache, &unique_key()).await;
        hash_round_trip(&cache, &unique_key()).await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_miss_not_an_error() {
        // Port 1 on loopback: nothing listens there, so every connection attempt is refused.
        let cache = RedisCache::connect("redis://127.0.0.1:1", Duration::from_millis(100)).unwrap();
        let started = Instant::now();
        cache.set("k", b"v", Duration::from_secs(5)).await;
        assert_eq!(cache.get("k").await, None);
        cache.delete("k").await;
        assert!(!cache.is_connected());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
