//! The components this node hosts: deploy, restore, checkpoint, remove, and their persistence
//! in the data directory (one snapshot file per component, written atomically).

use crate::datadir::{DataDir, write_atomic, write_atomic_with};
use crate::metrics::{Metrics, TriggerLabels};
use crate::runtime::{Carried, ComponentHandle, Instance, Router, Runtime};
use continuum_gossip::{PeerId, Policy};
use continuum_migrate::{ComponentMeta, Snapshot, digest_hex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

/// A control-API failure, with the HTTP status that reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed request, unusable content: a bad module or snapshot.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Unprocessable(_) => 422,
            ApiError::Internal(_) => 500,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(format!("{e:#}"))
    }
}

/// What `continuum ls` shows of a component.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentInfo {
    pub name: String,
    /// Peer id of the node that hosts it.
    pub host: String,
    /// Location epoch: grows each time the component moves (always 1 on a single node).
    pub epoch: u64,
    /// blake3 of the module (hex).
    pub digest: String,
    pub version: String,
    pub module_bytes: u64,
    pub memory_bytes: u64,
    pub calls: u64,
    pub failed_calls: u64,
    pub ticks: u64,
    /// Its share of a core over the last few seconds (requests and ticks).
    #[serde(default)]
    pub cpu: f32,
    /// Time its code ran (requests and ticks), ns in all.
    #[serde(default)]
    pub busy_ns: u64,
    /// Requests it is serving now (started, not answered: waiting on calls or timers).
    #[serde(default)]
    pub in_flight: u64,
    /// Calls it made to other components, and those waiting for an answer now.
    #[serde(default)]
    pub calls_out: u64,
    #[serde(default)]
    pub calls_out_in_flight: u64,
    /// The federation it may only run within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<String>,
    /// Labels its host must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, String>,
    #[serde(default)]
    pub policy: Policy,
}

/// Where a component may run, as the deployer set it (a deployment to a peer carries it).
pub use continuum_wire::rpc::Bounds;

pub struct Components {
    rt: Arc<Runtime>,
    dir: DataDir,
    metrics: Arc<Metrics>,
    router: Arc<dyn Router>,
    peer_id: String,
    me: PeerId,
    map: RwLock<BTreeMap<String, Arc<ComponentHandle>>>,
    /// Components that moved away: where to, at which epoch. Requests that still come here
    /// follow them, whatever the gossip says yet.
    moved: RwLock<BTreeMap<String, (PeerId, u64)>>,
    /// Serialises changes (deploy, restore, remove) and snapshot writes.
    ops: tokio::sync::Mutex<()>,
}

/// Names are path segments and file names: keep them to a safe alphabet.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid component name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// Checkpoints, decoding, compiling: bulk work, off the request path.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    crate::bulk::run(f)
        .await
        .map_err(|e| ApiError::Internal(format!("{e:#}")))
}

impl Components {
    pub fn new(
        rt: Arc<Runtime>,
        dir: DataDir,
        metrics: Arc<Metrics>,
        router: Arc<dyn Router>,
        peer_id: String,
    ) -> Self {
        Components {
            rt,
            dir,
            metrics,
            router,
            me: peer_id.parse().expect("the node's own peer id parses"),
            peer_id,
            map: RwLock::default(),
            moved: RwLock::default(),
            ops: tokio::sync::Mutex::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<ComponentHandle>> {
        self.map.read().unwrap().get(name).cloned()
    }

    /// Where a component that left this node went, and at which epoch.
    pub fn moved_to(&self, name: &str) -> Option<(PeerId, u64)> {
        self.moved.read().unwrap().get(name).copied()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn handles(&self) -> Vec<Arc<ComponentHandle>> {
        self.map.read().unwrap().values().cloned().collect()
    }

    pub fn list(&self) -> Vec<ComponentInfo> {
        self.map
            .read()
            .unwrap()
            .values()
            .map(|h| self.info(h))
            .collect()
    }

    /// What the mesh announces of this node's components.
    pub fn hosted(&self) -> Vec<continuum_gossip::Hosted> {
        self.map
            .read()
            .unwrap()
            .values()
            .map(|h| continuum_gossip::Hosted {
                name: h.name.clone(),
                epoch: h.stats.epoch.load(Ordering::Relaxed),
                digest: h.digest,
                handoff: h.handoff.get().cloned(),
            })
            .collect()
    }

    fn info(&self, h: &ComponentHandle) -> ComponentInfo {
        ComponentInfo {
            name: h.name.clone(),
            host: self.peer_id.clone(),
            epoch: h.stats.epoch.load(Ordering::Relaxed),
            digest: digest_hex(&h.digest),
            version: h.version.clone(),
            module_bytes: h.module_size as u64,
            memory_bytes: h.stats.memory_bytes.load(Ordering::Relaxed),
            calls: h.stats.calls.load(Ordering::Relaxed),
            failed_calls: h.stats.failed_calls.load(Ordering::Relaxed),
            ticks: h.stats.ticks.load(Ordering::Relaxed),
            cpu: h.stats.cpu_milli.load(Ordering::Relaxed) as f32 / 1000.0,
            busy_ns: h.stats.busy_ns.load(Ordering::Relaxed),
            in_flight: h.stats.in_flight.load(Ordering::Relaxed),
            calls_out: h.stats.calls_out.load(Ordering::Relaxed),
            calls_out_in_flight: h.stats.calls_out_in_flight.load(Ordering::Relaxed),
            federation: h.federation.clone(),
            require: h.require.clone(),
            policy: h.policy,
        }
    }

    fn bad(&self, reason: &'static str, msg: String) -> ApiError {
        self.metrics.reject(reason);
        ApiError::Unprocessable(msg)
    }

    /// Start `instance`, write its first snapshot, and make it reachable under its name,
    /// replacing (and stopping) any previous holder of the name.
    async fn install(
        &self,
        mut instance: Instance,
        trigger: &'static str,
    ) -> Result<ComponentInfo, ApiError> {
        let (snap, instance) = blocking(move || (instance.checkpoint(), instance)).await?;
        let snap = snap.map_err(|e| ApiError::Internal(format!("first checkpoint failed: {e}")))?;
        self.write_snapshot(&snap, trigger).await?;
        let handle = self.adopt(instance, None).await?;
        Ok(self.info(&handle))
    }

    fn spawn(
        &self,
        instance: Instance,
        carried: Option<(Carried, PeerId)>,
    ) -> Result<Arc<ComponentHandle>, ApiError> {
        ComponentHandle::spawn(
            instance,
            self.metrics.clone(),
            &self.rt.limits,
            self.router.clone(),
            carried,
        )
        .map_err(|e| ApiError::Internal(format!("starting the component thread: {e}")))
    }

    /// Start `instance` and make it reachable under its name, replacing (and stopping) any
    /// previous holder of the name; `carried` are the requests in flight it brought from the
    /// node it migrated from. Nothing is written: a migration target writes the state once the
    /// component is its own.
    pub async fn adopt(
        &self,
        instance: Instance,
        carried: Option<(Carried, PeerId)>,
    ) -> Result<Arc<ComponentHandle>, ApiError> {
        let handle = self.spawn(instance, carried)?;
        self.moved.write().unwrap().remove(&handle.name);
        let old = self
            .map
            .write()
            .unwrap()
            .insert(handle.name.clone(), handle.clone());
        self.metrics.components.set(self.len() as i64);
        if let Some(old) = old {
            old.stop(false).await;
        }
        Ok(handle)
    }

    /// The component left for `to` at `epoch`: requests still coming here follow it, and the
    /// requests its thread holds go there. Its saved state here stays until the target
    /// confirms it saved its own ([`Self::forget`]).
    pub async fn moved(
        &self,
        handle: &Arc<ComponentHandle>,
        to: PeerId,
        epoch: u64,
    ) -> Vec<std::time::Duration> {
        let name = handle.name.clone();
        self.moved
            .write()
            .unwrap()
            .insert(name.clone(), (to, epoch));
        {
            let mut map = self.map.write().unwrap();
            if map.get(&name).is_some_and(|cur| Arc::ptr_eq(cur, handle)) {
                map.remove(&name);
            }
        }
        self.metrics.components.set(self.len() as i64);
        handle.moved(to).await
    }

    /// Delete the saved state of a component that moved away (unless it is back meanwhile).
    pub async fn forget(&self, name: &str) {
        let _op = self.ops.lock().await;
        if self.get(name).is_none() {
            self.remove_state(name).await;
            self.sweep_modules();
        }
    }

    /// Delete the saved state of `name`, in the background (see `bulk`): deleting a large file
    /// frees its pages in one system call, which a request thread woken on that core waits out.
    async fn remove_state(&self, name: &str) {
        let files = [self.dir.snapshot(name), self.dir.handoff(name)];
        let _ = crate::bulk::run(move || {
            for f in files {
                let _ = std::fs::remove_file(f);
            }
        })
        .await;
    }

    /// Drop a staged component that never became this node's (a migration that failed
    /// after the target was ready but before it was committed).
    pub async fn discard(&self, handle: &Arc<ComponentHandle>) {
        let _op = self.ops.lock().await;
        {
            let mut map = self.map.write().unwrap();
            if map
                .get(&handle.name)
                .is_some_and(|cur| Arc::ptr_eq(cur, handle))
            {
                map.remove(&handle.name);
            }
        }
        self.metrics.components.set(self.len() as i64);
        handle.stop(false).await;
    }

    /// Live update: start `wasm` as the new version of `name`, hand it the running version's
    /// state through the component's `save` and `upgrade`, and switch; requests that arrive
    /// meanwhile are held, then served by the new version. If anything fails the running
    /// version goes on with its state, untouched.
    pub async fn update(
        &self,
        name: &str,
        version: Option<&str>,
        wasm: Vec<u8>,
    ) -> Result<ComponentInfo, ApiError> {
        let _op = self.ops.lock().await;
        let old = self.get(name).ok_or_else(|| not_found(name))?;
        let version = match version {
            Some(v) => v.to_string(),
            None => match old.version.parse::<u64>() {
                Ok(n) => (n + 1).to_string(),
                Err(_) => format!("{}-next", old.version),
            },
        };
        let rt = self.rt.clone();
        let module = blocking(move || rt.load(&wasm))
            .await?
            .map_err(|e| self.bad("bad_module", format!("module refused: {e:#}")))?;
        if module.digest == old.digest {
            return Err(ApiError::Conflict(format!(
                "component {name} runs module {} already",
                digest_hex(&old.digest)
            )));
        }
        let started = std::time::Instant::now();
        let (layout, saved) = old.handoff().await.map_err(|e| {
            self.bad(
                "update_refused",
                format!(
                    "update refused: version {} of {name} cannot hand over its state: {e:#}",
                    old.version
                ),
            )
        })?;
        // Frozen from here: every request to the component waits.
        let rt = self.rt.clone();
        let meta = ComponentMeta {
            name: name.to_string(),
            version: version.clone(),
            abi: continuum_guest::ABI_VERSION,
            epoch: old.stats.epoch.load(Ordering::Relaxed),
            federation: old.federation.clone(),
            require: old.require.clone(),
            policy: old.policy.name().to_string(),
        };
        let saved_len = saved.len();
        let next = blocking(move || -> anyhow::Result<Instance> {
            let mut next = Instance::fresh(&rt, module, meta)?;
            next.upgrade(layout, &saved)?;
            Ok(next)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r)
        .and_then(|next| self.spawn(next, None).map_err(|e| anyhow::anyhow!("{e}")));
        // Whatever went wrong, the old version must not stay frozen.
        let handle = match next {
            Ok(h) => h,
            Err(e) => {
                old.unfreeze().await;
                self.metrics.update("rolled_back");
                tracing::warn!(component = name, "update to {version} rolled back: {e:#}");
                return Err(self.bad(
                    "update_refused",
                    format!(
                        "update to version {version} rolled back; {name} goes on at version {} with its state: {e:#}",
                        old.version
                    ),
                ));
            }
        };
        self.map
            .write()
            .unwrap()
            .insert(name.to_string(), handle.clone());
        // The old thread hands back what it held; those requests find the new version.
        old.moved(self.me).await;
        let paused = started.elapsed();
        self.metrics.update("ok");
        tracing::info!(
            component = name,
            from = %old.version,
            to = %version,
            layout,
            state_bytes = saved_len,
            paused_ms = paused.as_secs_f64() * 1000.0,
            "updated live"
        );
        if let Some(snap) = handle.checkpoint(false).await? {
            self.write_snapshot(&snap, "update").await?;
        }
        Ok(self.info(&handle))
    }

    /// Checkpoint one component to disk now.
    pub async fn save(&self, name: &str, trigger: &'static str) -> Result<(), ApiError> {
        let handle = self.get(name).ok_or_else(|| not_found(name))?;
        self.save_handle(&handle, trigger, false).await
    }

    async fn save_handle(
        &self,
        h: &Arc<ComponentHandle>,
        trigger: &'static str,
        only_dirty: bool,
    ) -> Result<(), ApiError> {
        let only_dirty = only_dirty && !h.stats.unsaved.load(Ordering::Relaxed);
        if let Some(snap) = h.checkpoint(only_dirty).await? {
            let _op = self.ops.lock().await;
            // A component removed (or moved) meanwhile must not come back from its snapshot.
            if self.get(&h.name).is_some_and(|cur| Arc::ptr_eq(&cur, h)) {
                let written = self.write_snapshot(&snap, trigger).await;
                h.stats.unsaved.store(written.is_err(), Ordering::Relaxed);
                written?;
            }
        }
        Ok(())
    }

    /// Deploy a new component from module bytes.
    /// Deploy a new component from module bytes; `bounds` (federation, required labels) stay
    /// with it wherever it moves.
    pub async fn deploy(
        &self,
        name: &str,
        version: &str,
        wasm: Vec<u8>,
        bounds: Bounds,
    ) -> Result<ComponentInfo, ApiError> {
        check_name(name)?;
        let _op = self.ops.lock().await;
        if self.get(name).is_some() {
            return Err(ApiError::Conflict(format!(
                "component {name} exists already; remove it first or use `continuum update`"
            )));
        }
        let rt = self.rt.clone();
        let meta = ComponentMeta {
            name: name.to_string(),
            version: version.to_string(),
            abi: continuum_guest::ABI_VERSION,
            epoch: 1,
            federation: bounds.federation,
            require: bounds.require,
            policy: bounds.policy.name().to_string(),
        };
        let instance = blocking(move || -> anyhow::Result<Instance> {
            let module = rt.load(&wasm)?;
            Instance::fresh(&rt, module, meta)
        })
        .await?
        .map_err(|e| self.bad("bad_module", format!("module refused: {e:#}")))?;
        let info = self.install(instance, "deploy").await?;
        tracing::info!(component = name, digest = %info.digest, "deployed");
        Ok(info)
    }

    /// Restore a component from snapshot bytes, under `name` or the snapshot's own name.
    pub async fn restore(
        &self,
        name: Option<&str>,
        bytes: bytes::Bytes,
    ) -> Result<ComponentInfo, ApiError> {
        let mut snap = blocking(move || Snapshot::decode(bytes))
            .await?
            .map_err(|e| self.bad("bad_snapshot", format!("snapshot refused: {e}")))?;
        let name = name.unwrap_or(&snap.meta.name).to_string();
        check_name(&name)?;
        let _op = self.ops.lock().await;
        if let Some(existing) = self.get(&name)
            && existing.digest != snap.module_digest
        {
            return Err(self.bad(
                    "bad_snapshot",
                    format!(
                        "snapshot refused: it is of module {}, but component {name} runs module {}; remove the component first or restore under another name",
                        digest_hex(&snap.module_digest),
                        digest_hex(&existing.digest)
                    ),
                ));
        }
        snap.meta.name = name.clone();
        let rt = self.rt.clone();
        let instance = blocking(move || -> anyhow::Result<Instance> {
            let module = match snap.module.take() {
                Some(wasm) => rt.load(&wasm)?,
                None => rt.load_digest(&snap.module_digest).map_err(|_| {
                    anyhow::anyhow!(
                        "it does not carry its module and this node lacks module {}",
                        digest_hex(&snap.module_digest)
                    )
                })?,
            };
            Instance::restore(&rt, module, &snap)
        })
        .await?
        .map_err(|e| self.bad("bad_snapshot", format!("snapshot refused: {e:#}")))?;
        let info = self.install(instance, "restore").await?;
        tracing::info!(component = %name, "restored from a snapshot");
        Ok(info)
    }

    /// Checkpoint one component now; also becomes its durable state. With `with_module` the
    /// snapshot carries the module, so that it restores on a node that never saw it.
    pub async fn checkpoint(&self, name: &str, with_module: bool) -> Result<Vec<u8>, ApiError> {
        let handle = self.get(name).ok_or_else(|| not_found(name))?;
        let snap = handle
            .checkpoint(false)
            .await?
            .ok_or_else(|| ApiError::Internal("checkpoint came back empty".into()))?;
        let snap = {
            let _op = self.ops.lock().await;
            self.write_snapshot(&snap, "api").await?;
            snap
        };
        let rt = self.rt.clone();
        blocking(move || -> Result<Vec<u8>, ApiError> {
            let mut snap = snap;
            if with_module {
                let wasm = rt
                    .module_bytes(&snap.module_digest)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                snap.module = Some(wasm);
            }
            Ok(snap.encode())
        })
        .await?
    }

    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let _op = self.ops.lock().await;
        let handle = self
            .map
            .write()
            .unwrap()
            .remove(name)
            .ok_or_else(|| not_found(name))?;
        self.metrics.components.set(self.len() as i64);
        handle.stop(false).await;
        self.remove_state(name).await;
        self.sweep_modules();
        tracing::info!(component = name, "removed");
        Ok(())
    }

    /// Checkpoint every component (those whose state changed, with `only_dirty`) to disk.
    /// The periodic checkpoint of `h`, if it changed (or its last one was not written), unless
    /// one of it is still under way: a component whose thread is busy misses rounds, and holds
    /// up no other component's checkpoints.
    pub async fn checkpoint_periodic(&self, h: &Arc<ComponentHandle>) {
        if h.stats.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.save_handle(h, "periodic", true).await {
            tracing::error!(component = %h.name, "checkpoint not written: {e}");
        }
        h.stats.checkpointing.store(false, Ordering::Release);
    }

    /// Stop every component, each after a last checkpoint written to disk; false if any of
    /// them could not be written (the node then exits with an error: state was lost).
    pub async fn stop_all(&self) -> bool {
        let handles: Vec<_> = std::mem::take(&mut *self.map.write().unwrap())
            .into_values()
            .collect();
        let _op = self.ops.lock().await;
        let mut all_written = true;
        for h in handles {
            match h.stop(true).await {
                Some(Ok(snap)) => {
                    if let Err(e) = self.write_snapshot(&snap, "shutdown").await {
                        tracing::error!(component = %h.name, "last checkpoint not written: {e}");
                        all_written = false;
                    }
                }
                Some(Err(e)) => {
                    tracing::error!(component = %h.name, "last checkpoint failed: {e:#}");
                    all_written = false;
                }
                None => {
                    tracing::error!(component = %h.name, "component thread was gone at shutdown");
                    all_written = false;
                }
            }
        }
        self.metrics.components.set(0);
        all_written
    }

    async fn write_snapshot(&self, snap: &Snapshot, trigger: &'static str) -> Result<(), ApiError> {
        let path = self.dir.snapshot(&snap.meta.name);
        let snap = snap.clone();
        // In the background (see `bulk`): a large snapshot takes a while to write.
        let written = crate::bulk::run(move || {
            if crate::fault::faulty_file("disk-full") {
                anyhow::bail!("no space left on device (fault injection)");
            }
            write_atomic_with(&path, |w| snap.write_to(w))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let len = match written {
            Ok(len) => len,
            Err(e) => {
                self.metrics
                    .checkpoint_failures
                    .get_or_create(&TriggerLabels { trigger })
                    .inc();
                return Err(e.into());
            }
        };
        self.metrics
            .checkpoints
            .get_or_create(&TriggerLabels { trigger })
            .inc();
        self.metrics.checkpoint_bytes.inc_by(len);
        Ok(())
    }

    /// Bring back every component saved in the data directory. A snapshot that cannot be
    /// restored is reported and left in place; the others come back regardless.
    pub async fn load_all(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.components()) else {
            return 0;
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .collect();
        paths.sort();
        let mut restored = 0;
        for path in paths {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let result = match std::fs::read(&path) {
                Ok(bytes) => self.restore(Some(&name), bytes.into()).await.map(|_| ()),
                Err(e) => Err(ApiError::Internal(e.to_string())),
            };
            match result {
                Ok(()) => {
                    restored += 1;
                    self.recall_handoff(&name);
                }
                Err(e) => tracing::error!("could not bring back {}: {e}", path.display()),
            }
        }
        self.sweep_modules();
        restored
    }

    /// Keep the hand-off that brought `h` here with its state, so that after a restart the
    /// node still proves where the component came from (and the host before, should it come
    /// back with an old copy, learns that its copy is stale).
    pub fn keep_handoff(&self, h: &ComponentHandle) {
        let Some(handoff) = h.handoff.get() else {
            return;
        };
        if let Err(e) = write_atomic(&self.dir.handoff(&h.name), &handoff.to_bytes()) {
            tracing::warn!(component = %h.name, "could not keep its hand-off: {e:#}");
        }
    }

    /// The kept hand-off of a component brought back from disk, if it is for this node and the
    /// epoch the component is at (an older one is of a stay before).
    fn recall_handoff(&self, name: &str) {
        let (Some(h), Ok(bytes)) = (self.get(name), std::fs::read(self.dir.handoff(name))) else {
            return;
        };
        let epoch = h.stats.epoch.load(Ordering::Relaxed);
        match continuum_gossip::SignedHandoff::from_bytes(&bytes) {
            Ok(signed)
                if signed
                    .verify()
                    .is_ok_and(|f| f.to == self.me && f.name == name && f.epoch == epoch) =>
            {
                let _ = h.handoff.set(signed);
            }
            _ => tracing::info!(
                component = name,
                "its kept hand-off is not for this stay: ignored"
            ),
        }
    }

    /// Delete the stored modules that no component here runs and no saved state names (of a
    /// component removed or moved away, of a migration here that failed): the store keeps
    /// what the node needs, not everything it was ever sent. If any saved state cannot be
    /// read, nothing is deleted: the module it needs is unknown.
    pub fn sweep_modules(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.components()) else {
            return;
        };
        let keep: Option<std::collections::HashSet<_>> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .map(|p| {
                let f = std::fs::File::open(&p).ok()?;
                Snapshot::module_of(std::io::BufReader::new(f)).ok()
            })
            .collect();
        let Some(keep) = keep else {
            tracing::warn!("a saved state cannot be read: no module deleted");
            return;
        };
        let deleted = self.rt.sweep(&keep);
        if deleted > 0 {
            tracing::info!(files = deleted, "deleted stored modules nothing here needs");
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no component named {name} on this node"))
}
