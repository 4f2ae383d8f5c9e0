//! The schema registry: the one place that changes [`Schemas`], persists them under `meta.storage_path`
//! before a change is acknowledged, and broadcasts each new snapshot to every core.
//!
//! On disk: `schemas.json` holds the small facts (endpoint uris and headers, services, revisions), and
//! each discovery response lives in its own file `discovery/<sha256>.pb`, written once when an endpoint
//! is registered and deleted once no endpoint names it; so a registration rewrites a small
//! `schemas.json`, and the responses are read back only at start. Every file is created mode 0600:
//! `additional_headers` may hold credentials.
//!
//! Updates are rare (registrations) and serialized by an async lock. Each core holds its own
//! [`LocalSchemas`]: an `Rc` to the current immutable snapshot, replaced whole by that core's update task,
//! so a core never sees a half-applied update and reads on the hot path take no lock.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};

use super::{Error as SchemaError, Persisted, Schemas};

/// File holding the persisted registry.
const FILE: &str = "schemas.json";
/// Directory of the discovery responses, one file per distinct response.
const DISCOVERY_DIR: &str = "discovery";

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The change itself was refused.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// It could not be made durable (nothing changed).
    #[error("cannot persist the schema registry in {path}: {message}")]
    Persist { path: String, message: String },
}

impl Error {
    /// A failed write may work later; a refused change will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Persist { .. })
    }
}

type Update = (Arc<Schemas>, oneshot::Sender<()>);

/// The node's schema registry (thread-safe; one per process).
pub struct Registry {
    dir: PathBuf,
    /// Serializes updates: compute, persist, publish, one at a time.
    updating: async_lock::Mutex<()>,
    /// The latest published snapshot and the cores to publish to.
    published: Mutex<Published>,
}

struct Published {
    current: Arc<Schemas>,
    cores: Vec<mpsc::Sender<Update>>,
}

/// A core's view of the schemas.
#[derive(Clone)]
pub struct LocalSchemas(Rc<RefCell<Arc<Schemas>>>);

impl LocalSchemas {
    /// The current snapshot (cheap: an `Arc` clone).
    pub fn get(&self) -> Arc<Schemas> {
        self.0.borrow().clone()
    }
}

impl Registry {
    /// Loads the registry persisted in `dir` (empty if none). A registry written before the discovery
    /// files existed (responses inline in `schemas.json`) is migrated to them.
    pub fn load(dir: &Path) -> Result<Arc<Registry>, SchemaError> {
        let path = dir.join(FILE);
        let corrupt =
            |e: &dyn std::fmt::Display| SchemaError::Corrupt(format!("{}: {e}", path.display()));
        let current = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut persisted: Persisted =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(&e))?;
                let migrate = persisted.endpoints.iter().any(|e| e.discovery.is_some());
                if migrate {
                    for endpoint in &mut persisted.endpoints {
                        let raw = endpoint.discovery_bytes(|d| load_discovery(dir, d))?;
                        let digest = super::digest(&raw);
                        write_atomically(&dir.join(DISCOVERY_DIR), &format!("{digest}.pb"), &raw)
                            .map_err(|e| corrupt(&e))?;
                        endpoint.discovery = None;
                        endpoint.discovery_sha256 = Some(digest);
                    }
                }
                let schemas = Schemas::from_persisted(persisted, |d| load_discovery(dir, d))?;
                if migrate {
                    write_snapshot(dir, &schemas).map_err(|e| corrupt(&e))?;
                }
                schemas
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Schemas::default(),
            Err(e) => return Err(corrupt(&e)),
        };
        Ok(Arc::new(Registry {
            dir: dir.to_owned(),
            updating: async_lock::Mutex::new(()),
            published: Mutex::new(Published {
                current: Arc::new(current),
                cores: Vec::new(),
            }),
        }))
    }

    /// The latest snapshot (admin reads; cores use their [`LocalSchemas`]).
    pub fn snapshot(&self) -> Arc<Schemas> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// Called once on each core at start: returns the core's view, kept current by a task on that core.
    pub fn attach_core(&self) -> LocalSchemas {
        // One update in flight per core at most (updates are serialized), so a buffer of 1 suffices.
        let (tx, mut rx) = mpsc::channel::<Update>(1);
        let local = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.cores.push(tx);
            LocalSchemas(Rc::new(RefCell::new(published.current.clone())))
        };
        let view = local.clone();
        glommio::spawn_local(async move {
            while let Some((schemas, ack)) = rx.next().await {
                if schemas.version >= view.0.borrow().version {
                    *view.0.borrow_mut() = schemas;
                }
                let _ = ack.send(());
            }
        })
        .detach();
        local
    }

    /// Applies `change` to the latest snapshot, persists the result, and publishes it to every core;
    /// returns once every live core has installed it. Must run on an executor.
    pub async fn update<T>(
        &self,
        change: impl FnOnce(&Schemas) -> Result<(Schemas, T), SchemaError>,
    ) -> Result<T, Error> {
        self.update_with_discovery(None, change).await
    }

    /// [`update`](Self::update) for a registration: `discovery` (the response the change registers)
    /// is stored in its file before the snapshot naming it; files no endpoint names any more are
    /// deleted after.
    pub async fn update_with_discovery<T>(
        &self,
        discovery: Option<Vec<u8>>,
        change: impl FnOnce(&Schemas) -> Result<(Schemas, T), SchemaError>,
    ) -> Result<T, Error> {
        let _serialized = self.updating.lock().await;
        let (next, result) = change(&self.snapshot())?;
        self.persist(&next, discovery).await?;
        let next = Arc::new(next);
        let cores = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.current = next.clone();
            published.cores.retain(|c| !c.is_closed());
            published.cores.clone()
        };
        let mut acks = Vec::with_capacity(cores.len());
        for mut core in cores {
            let (ack, acked) = oneshot::channel();
            // A core that is gone (shutting down) does not hold the update back.
            if core.send((next.clone(), ack)).await.is_ok() {
                acks.push(acked);
            }
        }
        for acked in acks {
            let _ = acked.await;
        }
        Ok(result)
    }

    /// Writes `discovery` (if any) and then the snapshot atomically, and deletes the discovery files
    /// the snapshot no longer names; all off the executor.
    async fn persist(&self, schemas: &Schemas, discovery: Option<Vec<u8>>) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(&schemas.to_persisted()).expect("serializable");
        let live: std::collections::HashSet<String> = schemas
            .endpoints
            .values()
            .map(|e| format!("{}.pb", e.discovery_digest))
            .collect();
        let dir = self.dir.clone();
        let written = glommio::executor()
            .spawn_blocking(move || {
                let responses = dir.join(DISCOVERY_DIR);
                if let Some(raw) = discovery {
                    let name = format!("{}.pb", super::digest(&raw));
                    write_atomically(&responses, &name, &raw)?;
                }
                write_atomically(&dir, FILE, &bytes)?;
                delete_unnamed(&responses, &live);
                Ok::<_, std::io::Error>(())
            })
            .await;
        written.map_err(|e| Error::Persist {
            path: self.dir.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// Reads the discovery response with `digest` (and checks it is that response).
fn load_discovery(dir: &Path, digest: &str) -> Result<Vec<u8>, SchemaError> {
    let path = dir.join(DISCOVERY_DIR).join(format!("{digest}.pb"));
    let raw = std::fs::read(&path)
        .map_err(|e| SchemaError::Corrupt(format!("{}: {e}", path.display())))?;
    if super::digest(&raw) != digest {
        return Err(SchemaError::Corrupt(format!(
            "{}: the content does not match its name",
            path.display()
        )));
    }
    Ok(raw)
}

/// Writes the persisted form of `schemas` (at start, migrating an old registry).
fn write_snapshot(dir: &Path, schemas: &Schemas) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(&schemas.to_persisted()).expect("serializable");
    write_atomically(dir, FILE, &bytes)
}

/// Deletes the discovery files not in `live` (best effort: a leftover file is only disk space, and the
/// next registration retries).
fn delete_unnamed(responses: &Path, live: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(responses) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !live.contains(&name) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                log::warn!("cannot delete the stale discovery file {name}: {e}");
            }
        }
    }
}

/// Writes `dir/name` atomically: a fresh mode-0600 temp file, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    // A temp file left by a crash may have other permissions: start from a fresh one.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// A registry written before the discovery files (responses inline, base64, in a world-readable
    /// schemas.json) loads, and is rewritten without them, every file mode 0600.
    #[test]
    fn inline_discovery_responses_are_migrated_to_private_files() {
        use base64::Engine;
        use prost::Message;
        use std::os::unix::fs::PermissionsExt;
        static ENDPOINT: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/endpoint_descriptor.bin"));
        let mut raw = crate::proto::discovery::ServiceDiscoveryResponse {
            services: vec!["restate.test.Echo".to_owned()],
            ..Default::default()
        }
        .encode_to_vec();
        prost::encoding::bytes::encode(1, &ENDPOINT.to_vec(), &mut raw);
        let old = serde_json::json!({
            "version": 3,
            "endpoints": [{
                "uri": "http://a:1",
                "additional_headers": { "authorization": "Bearer x" },
                "discovery": base64::engine::general_purpose::STANDARD.encode(&raw),
            }],
            "services": [{
                "name": "restate.test.Echo",
                "endpoint_id": "YToxLw",
                "revision": 4,
                "public": false,
            }],
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        std::fs::write(&file, old.to_string()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

        let registry = Registry::load(dir.path()).unwrap();
        let schemas = registry.snapshot();
        assert_eq!(schemas.services["restate.test.Echo"].revision, 4);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("\"discovery\""), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        let stored = dir
            .path()
            .join(DISCOVERY_DIR)
            .join(format!("{}.pb", crate::schema::digest(&raw)));
        assert_eq!(std::fs::read(&stored).unwrap(), raw);
        assert_eq!(mode(&stored), 0o600);
        let again = Registry::load(dir.path()).unwrap().snapshot();
        assert_eq!(again.endpoints.len(), 1);
        assert!(!again.services["restate.test.Echo"].public);
    }

    /// When `update` returns, every core's local view already holds the new snapshot, and the change is
    /// on disk.
    #[test]
    fn updates_reach_every_core_before_they_are_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(dir.path()).unwrap();
        let updated = Arc::new(AtomicBool::new(false));
        let attached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let results = glommio::LocalExecutorPoolBuilder::new(glommio::PoolPlacement::Unbound(3))
            .io_memory(1 << 20)
            .on_all_shards({
                let registry = registry.clone();
                move || {
                    let registry = registry.clone();
                    let updated = updated.clone();
                    let attached = attached.clone();
                    async move {
                        let local = registry.attach_core();
                        let first = attached.fetch_add(1, Ordering::SeqCst) == 0;
                        if first {
                            while attached.load(Ordering::SeqCst) < 3 {
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                            }
                            registry
                                .update(|s| {
                                    let mut next = s.clone();
                                    next.version += 1;
                                    Ok((next, ()))
                                })
                                .await
                                .unwrap();
                            updated.store(true, Ordering::SeqCst);
                        } else {
                            for _ in 0..10_000 {
                                if updated.load(Ordering::SeqCst) {
                                    break;
                                }
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        local.get().version
                    }
                }
            })
            .unwrap()
            .join_all();
        let versions: Vec<u64> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(versions, vec![1, 1, 1]);
        assert_eq!(Registry::load(dir.path()).unwrap().snapshot().version, 1);
    }
}
