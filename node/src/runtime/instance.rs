//! One instance of a component: calls through the guest ABI under a deadline and a memory cap,
//! checkpoint, and restore into a fresh instance.

use super::host::{GuestIo, HostState};
use super::{LoadedModule, Runtime};
use anyhow::{Context, Result, bail};
use continuum_guest::{Request, Response, abi};
use continuum_migrate::{
    CaptureError, ComponentMeta, Digest, MemoryDelta, Snapshot, StateHandles, Tracking, Value,
    digest_hex,
};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Memory, Store, Trap, TypedFunc};

/// Why a call into a component failed. The instance survives all of these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the call exceeded its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    #[error("the component tried to grow its memory past the node's cap of {0} MiB")]
    MemoryCap(usize),
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the component returned a malformed response: {0}")]
    BadResponse(String),
    /// A request that waited (for calls it made, for timers) past its deadline.
    #[error("the request was not answered within its deadline of {0:?}")]
    Late(Duration),
    /// The call chain is too deep, or came back to a component that cannot take it now.
    #[error("{0}")]
    Loop(String),
    #[error("{0}")]
    Overloaded(String),
}

impl CallError {
    /// Label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Deadline(_) | CallError::Late(_) => "deadline",
            CallError::MemoryCap(_) => "memory_cap",
            CallError::Trap(_) => "trap",
            CallError::BadResponse(_) => "bad_response",
            CallError::Loop(_) => "loop",
            CallError::Overloaded(_) => "overloaded",
        }
    }

    /// HTTP status that reports it: the node is a gateway to the component.
    pub fn status(&self) -> u16 {
        match self {
            CallError::Deadline(_) | CallError::Late(_) => 504,
            CallError::Loop(_) => 508,
            CallError::Overloaded(_) => 503,
            _ => 502,
        }
    }
}

/// The exports of the guest ABI v2 (see guest/README.md).
#[derive(Clone)]
struct V2 {
    start: TypedFunc<(i32, i32, i32), ()>,
    wake: TypedFunc<(i64, i32, i32), ()>,
    cancel: TypedFunc<(i32, i32), ()>,
    current: TypedFunc<(), i32>,
    tasks: TypedFunc<(), i32>,
}

/// What one entry into a v2 guest did: what it asked of the host, and, if it failed, which
/// task it was running then.
pub struct Entry {
    pub io: GuestIo,
    pub failed: Option<(u32, CallError)>,
}

/// How a tick ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ticked {
    /// Run it again after this long.
    Next(Duration),
    /// No more ticks.
    Stop,
    /// It waits (for a call, a timer); it reports through `tick_done` when it finishes.
    Pending,
}

pub struct Instance {
    store: Store<HostState>,
    state: StateHandles,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    /// ABI v1's request export (modules built before ABI v2).
    handle: Option<TypedFunc<(i32, i32), i64>>,
    v2: Option<V2>,
    tick: Option<TypedFunc<i64, i32>>,
    on_restore: Option<TypedFunc<(), ()>>,
    /// Live update: the old version hands its state over, the new one takes it.
    save: Option<TypedFunc<(), i64>>,
    upgrade: Option<TypedFunc<(i32, i32, i32), i64>>,
    state_version: Option<TypedFunc<(), i32>>,
    /// WASI reactors' constructor: run on a fresh instance, never on a restored one.
    initialize: Option<TypedFunc<(), ()>>,
    module: Arc<LoadedModule>,
    meta: ComponentMeta,
    deadline_ticks: u64,
    timeout: Duration,
}

impl Instance {
    fn instantiate(
        rt: &Runtime,
        module: Arc<LoadedModule>,
        meta: ComponentMeta,
    ) -> Result<Instance> {
        let mut store = Store::new(
            module.pre.module().engine(),
            HostState::new(&meta.name, rt.limits.memory_cap, rt.limits.max_body),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(rt.deadline_ticks());
        let inst = module
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .context("instantiating the module")?;
        let abi = |e: wasmtime::Error| {
            anyhow::anyhow!("{e:#}")
                .context("the module's continuum ABI exports have the wrong types")
        };
        let alloc = inst
            .get_typed_func(&mut store, "continuum_alloc")
            .map_err(abi)?;
        let v2 = if inst.get_func(&mut store, super::ABI_V2_MARKER).is_some() {
            Some(V2 {
                start: inst
                    .get_typed_func(&mut store, "continuum_start")
                    .map_err(abi)?,
                wake: inst
                    .get_typed_func(&mut store, "continuum_wake")
                    .map_err(abi)?,
                cancel: inst
                    .get_typed_func(&mut store, "continuum_cancel")
                    .map_err(abi)?,
                current: inst
                    .get_typed_func(&mut store, "continuum_current")
                    .map_err(abi)?,
                tasks: inst
                    .get_typed_func(&mut store, "continuum_tasks")
                    .map_err(abi)?,
            })
        } else {
            None
        };
        let handle = match v2 {
            Some(_) => None,
            None => Some(
                inst.get_typed_func(&mut store, "continuum_handle")
                    .map_err(abi)?,
            ),
        };
        let tick = inst.get_typed_func(&mut store, "continuum_tick").ok();
        let on_restore = inst.get_typed_func(&mut store, "continuum_on_restore").ok();
        let save = inst.get_typed_func(&mut store, "continuum_save").ok();
        let upgrade = inst.get_typed_func(&mut store, "continuum_upgrade").ok();
        let state_version = inst
            .get_typed_func(&mut store, "continuum_state_version")
            .ok();
        let initialize = inst.get_typed_func(&mut store, "_initialize").ok();
        let memory = inst
            .get_memory(&mut store, "memory")
            .context("the module exports no memory named `memory`")?;
        store.data_mut().memory = Some(memory);
        let state = StateHandles::new(&mut store, &inst)?;
        Ok(Instance {
            store,
            state,
            memory,
            alloc,
            handle,
            v2,
            tick,
            on_restore,
            save,
            upgrade,
            state_version,
            initialize,
            module,
            meta,
            deadline_ticks: rt.deadline_ticks(),
            timeout: rt.limits.call_timeout,
        })
    }

    /// A new instance, initialised: runs the start function and `_initialize` once.
    pub fn fresh(rt: &Runtime, module: Arc<LoadedModule>, meta: ComponentMeta) -> Result<Instance> {
        let mut inst = Self::instantiate(rt, module, meta)?;
        if let Some(start) = inst.state.start().cloned() {
            inst.guarded(|s| start.call(s, &[], &mut []))
                .context("the module's start function failed")?;
        }
        if let Some(init) = inst.initialize.clone() {
            inst.guarded(|s| init.call(s, ()))
                .context("the module's _initialize failed")?;
        }
        Ok(inst)
    }

    /// A new instance carrying the state in `snap`; initialisation does not run again.
    pub fn restore(rt: &Runtime, module: Arc<LoadedModule>, snap: &Snapshot) -> Result<Instance> {
        if snap.module_digest != module.digest {
            bail!(
                "the snapshot is of module {}, not of module {}",
                digest_hex(&snap.module_digest),
                digest_hex(&module.digest)
            );
        }
        if snap.memory_bytes() > rt.limits.memory_cap as u64 {
            bail!(
                "the snapshot holds {} MiB of memory, above this node's cap of {} MiB",
                snap.memory_bytes() >> 20,
                rt.limits.memory_cap >> 20
            );
        }
        let mut inst = Self::blank(rt, module, snap.meta.clone())?;
        inst.write_pages(&snap.memories, true)?;
        inst.finish_restore(&snap.globals)?;
        // Requests that were waiting when the snapshot was taken waited for a node that is
        // gone (a crash, a restart, a checkpoint file carried elsewhere): nobody awaits their
        // answers, and their calls were lost with it. Drop them; the component goes on.
        if inst.v2.is_some() {
            let entry = inst.cancel(None, false);
            if let Some((_, e)) = entry.failed {
                bail!("dropping the requests that were in flight in the snapshot failed: {e}");
            }
        }
        Ok(inst)
    }

    /// An instance on which nothing has run, to write migrated state into: initialisation
    /// never runs on it, the state it receives was initialised already.
    pub fn blank(rt: &Runtime, module: Arc<LoadedModule>, meta: ComponentMeta) -> Result<Instance> {
        Self::instantiate(rt, module, meta)
    }

    /// Write pages into a blank instance (`whole`: the images are the entire state).
    pub fn write_pages(&mut self, images: &[MemoryDelta], whole: bool) -> Result<(), CaptureError> {
        self.state.write_pages(&mut self.store, images, whole)
    }

    /// Set the globals of restored or migrated state, then let the component know it was
    /// restored (its `on_restore` export, if any).
    pub fn finish_restore(&mut self, globals: &[Value]) -> Result<()> {
        self.state.set_globals(&mut self.store, globals)?;
        if let Some(f) = self.on_restore.clone() {
            self.guarded(|s| f.call(s, ()))
                .context("the component's on_restore failed")?;
        }
        Ok(())
    }

    /// The pages changed since `base` (a digest map per memory) and the new maps: one
    /// pre-copy round, taken between calls.
    pub fn capture_round(
        &self,
        base: &[Vec<Digest>],
        tracking: Option<&mut Tracking>,
    ) -> (Vec<MemoryDelta>, Vec<Vec<Digest>>) {
        self.state.capture_changed(&self.store, base, tracking)
    }

    /// Copies of the pages written since `tracking` last looked.
    pub fn copy_written(&self, tracking: &mut Tracking) -> Vec<continuum_migrate::WrittenPages> {
        self.state.copy_written(&self.store, tracking)
    }

    /// The length of every memory.
    pub fn memory_lens(&self) -> Vec<usize> {
        self.state.memory_lens(&self.store)
    }

    /// Copy part of memory `index` from `offset` into `dst`; how many bytes.
    pub fn copy_into(&self, index: usize, offset: usize, dst: &mut [u8]) -> usize {
        self.state.copy_into(&self.store, index, offset, dst)
    }

    /// Pages of memory `index` written since `tracking` last looked; `None` if it cannot say.
    pub fn written(&self, tracking: &mut Tracking, index: usize) -> Option<Vec<u32>> {
        self.state.written(&self.store, tracking, index)
    }

    /// Every memory, readable from another thread while this instance runs; `None` where one
    /// might move.
    ///
    /// # Safety
    /// The caller must keep this instance alive while any of them is used.
    pub unsafe fn live(&self) -> Option<Vec<continuum_migrate::LiveMemory>> {
        // SAFETY: passed on to our caller.
        unsafe { self.state.live(&self.store) }
    }

    /// Start kernel write tracking of the memories, for the rounds that follow.
    pub fn track(&self) -> std::io::Result<Tracking> {
        self.state.track(&self.store)
    }

    pub fn globals(&mut self) -> Result<Vec<Value>, CaptureError> {
        self.state.globals(&mut self.store)
    }

    /// The location epoch that checkpoints record.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.meta.epoch = epoch;
    }

    pub fn meta(&self) -> &ComponentMeta {
        &self.meta
    }

    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    pub fn memory_bytes(&self) -> u64 {
        self.state.memory_bytes(&self.store)
    }

    pub fn has_tick(&self) -> bool {
        self.tick.is_some()
    }

    /// Whether it speaks ABI v2 (requests are tasks, it can call other components).
    pub fn is_v2(&self) -> bool {
        self.v2.is_some()
    }

    /// The id the next operation it starts will get, and the place to set it (a migrated
    /// component goes on numbering where it was).
    pub fn next_op(&mut self) -> &mut u64 {
        &mut self.store.data_mut().next_op
    }

    /// Run one Wasm call under the deadline. If it fails, the mutable globals are put back as
    /// they were before it (the shadow stack pointer above all, which a trap leaves lowered);
    /// memory keeps whatever the call wrote.
    fn guarded<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let saved = self.state.globals(&mut self.store).ok();
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.store.data_mut().limiter.hit = false;
        f(&mut self.store).map_err(|e| {
            if let Some(g) = saved {
                let _ = self.state.set_globals(&mut self.store, &g);
            }
            let limiter = &self.store.data().limiter;
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => CallError::Deadline(self.timeout),
                _ if limiter.hit => CallError::MemoryCap(limiter.cap >> 20),
                Some(t) => CallError::Trap(t.to_string()),
                None => CallError::Trap(e.root_cause().to_string()),
            }
        })
    }

    /// Write `bytes` into a buffer the guest allocates; its (ptr, len).
    fn put(
        s: &mut Store<HostState>,
        alloc: &TypedFunc<i32, i32>,
        memory: Memory,
        bytes: &[u8],
    ) -> wasmtime::Result<(i32, i32)> {
        let len =
            i32::try_from(bytes.len()).map_err(|_| wasmtime::Error::msg("message too large"))?;
        if len == 0 {
            return Ok((0, 0));
        }
        let ptr = alloc.call(&mut *s, len)?;
        memory.write(&mut *s, ptr as u32 as usize, bytes)?;
        Ok((ptr, len))
    }

    /// Run one v2 entry and collect what it asked of the host.
    fn enter(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>, &V2, &TypedFunc<i32, i32>, Memory) -> wasmtime::Result<()>,
    ) -> Entry {
        let v2 = self.v2.clone().expect("a v2 entry into a v2 instance");
        let (alloc, memory) = (self.alloc.clone(), self.memory);
        let result = self.guarded(|s| f(s, &v2, &alloc, memory));
        let io = std::mem::take(&mut self.store.data_mut().io);
        let failed = match result {
            Ok(()) => None,
            Err(e) => {
                let current = v2.current.clone();
                let task = self.guarded(|s| current.call(s, ())).unwrap_or(0);
                Some((task as u32, e))
            }
        };
        Entry { io, failed }
    }

    /// ABI v2: start request `task`.
    pub fn start(&mut self, task: u32, req: &Request) -> Entry {
        let bytes = abi::encode_request(req);
        self.enter(|s, v2, alloc, memory| {
            let (ptr, len) = Self::put(s, alloc, memory, &bytes)?;
            v2.start.call(s, (task as i32, ptr, len))
        })
    }

    /// ABI v2: deliver the result of operation `op` (empty for a timer).
    pub fn wake(&mut self, op: u64, result: &[u8]) -> Entry {
        self.enter(|s, v2, alloc, memory| {
            let (ptr, len) = Self::put(s, alloc, memory, result)?;
            v2.wake.call(s, (op as i64, ptr, len))
        })
    }

    /// ABI v2: drop task `task` (every task with `None`); with `forget`, leak it instead of
    /// running its destructors (it trapped, its state may be broken).
    pub fn cancel(&mut self, task: Option<u32>, forget: bool) -> Entry {
        let task = task.map_or(-1, |t| t as i32);
        self.enter(|s, v2, _, _| v2.cancel.call(s, (task, forget as i32)))
    }

    /// ABI v2: how many tasks the guest holds.
    pub fn live_tasks(&mut self) -> Result<u32, CallError> {
        let Some(v2) = self.v2.clone() else {
            return Ok(0);
        };
        self.guarded(|s| v2.tasks.call(s, ())).map(|n| n as u32)
    }

    /// Handle one request (ABI v1).
    pub fn call(&mut self, req: &Request) -> Result<Response, CallError> {
        let bytes = abi::encode_request(req);
        let len =
            i32::try_from(bytes.len()).map_err(|_| CallError::Trap("request too large".into()))?;
        let Some(handle) = self.handle.clone() else {
            // ABI v2 outside a component thread: only an answer within the entry will do.
            const TASK: u32 = u32::MAX;
            let mut entry = self.start(TASK, req);
            if let Some((_, e)) = entry.failed {
                return Err(e);
            }
            return match entry.io.responses.pop() {
                Some((TASK, bytes)) => {
                    abi::decode_response(&bytes).map_err(|e| CallError::BadResponse(e.to_string()))
                }
                _ => {
                    self.cancel(Some(TASK), false);
                    Err(CallError::Trap(
                        "the component waits for something; serve it on a component thread".into(),
                    ))
                }
            };
        };
        let (alloc, memory) = (self.alloc.clone(), self.memory);
        let packed = self.guarded(|s| {
            let ptr = alloc.call(&mut *s, len)?;
            memory.write(&mut *s, ptr as u32 as usize, &bytes)?;
            handle.call(&mut *s, (ptr, len))
        })?;
        let out = self.handed_out(packed)?;
        abi::decode_response(out).map_err(|e| CallError::BadResponse(e.to_string()))
    }

    /// Bytes the component left at `packed` (ptr << 32 | len) for the host to copy.
    fn handed_out(&self, packed: i64) -> Result<&[u8], CallError> {
        let (ptr, len) = ((packed as u64 >> 32) as usize, packed as u32 as usize);
        self.memory
            .data(&self.store)
            .get(ptr..ptr.saturating_add(len))
            .ok_or_else(|| CallError::BadResponse("it lies outside the component's memory".into()))
    }

    /// Live update, old side: the state layout and the state, as the component hands them
    /// to its next version.
    pub fn save_state(&mut self) -> Result<(u32, Vec<u8>)> {
        let Some(save) = self.save.clone() else {
            bail!("this version exports no continuum_save: built with an older SDK");
        };
        let layout = match self.state_version.clone() {
            Some(f) => self.guarded(|s| f.call(s, ()))? as u32,
            None => 1,
        };
        let packed = self.guarded(|s| save.call(s, ()))?;
        if packed < 0 {
            bail!("it does not hand over its state (its Component::save returns None)");
        }
        Ok((layout, self.handed_out(packed)?.to_vec()))
    }

    /// Live update, new side: take over the state `saved` in layout `from` (a fresh
    /// instance). A trap or an error leaves this instance to be dropped.
    pub fn upgrade(&mut self, from: u32, saved: &[u8]) -> Result<()> {
        let Some(upgrade) = self.upgrade.clone() else {
            bail!("the new version exports no continuum_upgrade");
        };
        let len = i32::try_from(saved.len()).context("the saved state is too large")?;
        let (alloc, memory) = (self.alloc.clone(), self.memory);
        let packed = self.guarded(|s| {
            let ptr = alloc.call(&mut *s, len)?;
            memory.write(&mut *s, ptr as u32 as usize, saved)?;
            upgrade.call(&mut *s, (from as i32, ptr, len))
        })?;
        if packed != 0 {
            let why = String::from_utf8_lossy(self.handed_out(packed)?).into_owned();
            bail!("its upgrade refused the state: {why}");
        }
        Ok(())
    }

    /// Run the periodic task; what it asked of the host (ABI v2) comes back with how it ended.
    pub fn tick(&mut self, now_ms: u64) -> (Result<Ticked, CallError>, GuestIo) {
        let Some(tick) = self.tick.clone() else {
            return (Ok(Ticked::Stop), GuestIo::default());
        };
        let next = self.guarded(|s| tick.call(s, now_ms as i64));
        let io = std::mem::take(&mut self.store.data_mut().io);
        (next.map(ticked), io)
    }

    /// Capture the state; the instance is quiescent here by construction (no call is running).
    pub fn checkpoint(&mut self) -> Result<Snapshot, CaptureError> {
        self.state
            .capture(&mut self.store, self.meta.clone(), self.module.digest)
    }

    /// Rename (a restore under another name than the snapshot's).
    pub fn set_name(&mut self, name: &str) {
        self.meta.name = name.to_string();
    }
}

/// What a tick (or `tick_done`) returned: milliseconds to the next one, -1 for none, -2 for
/// still running.
pub fn ticked(code: i32) -> Ticked {
    match code {
        -2 => Ticked::Pending,
        n if n < 0 => Ticked::Stop,
        n => Ticked::Next(Duration::from_millis(n.max(1) as u64)),
    }
}
