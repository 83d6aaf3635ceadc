//! Checkpoint and restore against a live Wasmtime instance of an instrumented module.

use crate::instrument::{EXPORT_GLOBAL_PREFIX, EXPORT_MEMORY_PREFIX, EXPORT_START};
use crate::snapshot::{ComponentMeta, MemoryImage, Snapshot, Value};
use crate::{Digest, MemoryDelta, PAGE_SIZE, WrittenPages};
use wasmtime::{AsContext, AsContextMut, Extern, Func, Global, Instance, Memory, Val};

/// Why state could not be read from or written into an instance.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("the instance was not instrumented for checkpoints: {0}")]
    NotInstrumented(String),
    #[error("snapshot does not fit this module: {0}")]
    Mismatch(String),
    #[error("global {0} holds a reference, which cannot be checkpointed")]
    RefGlobal(usize),
    #[error("growing memory {memory} to {bytes} bytes for the restore failed: {why}")]
    Grow {
        memory: usize,
        bytes: u64,
        why: String,
    },
}

/// Kernel write tracking of an instance's memories (see [`StateHandles::track`]).
pub struct Tracking {
    #[cfg(target_os = "linux")]
    trackers: Vec<crate::WriteTracker>,
}

impl Tracking {
    /// Pages of memory `i` (now `mem`) written since the last look; `None` if the kernel
    /// failed us or the memory moved (the caller then hashes every page).
    fn written(&mut self, i: usize, mem: &[u8]) -> Option<Vec<u32>> {
        #[cfg(target_os = "linux")]
        {
            self.trackers
                .get_mut(i)?
                .take_written(mem.as_ptr(), mem.len())
                .ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (i, mem);
            None
        }
    }
}

/// The exported state of one instance, found once and reused for every checkpoint.
#[derive(Clone, Debug)]
pub struct StateHandles {
    memories: Vec<Memory>,
    globals: Vec<Global>,
    start: Option<Func>,
}

impl StateHandles {
    /// Find the state exports that [`crate::instrument`] added.
    pub fn new(mut store: impl AsContextMut, instance: &Instance) -> Result<Self, CaptureError> {
        let mut memories = Vec::new();
        let mut globals = Vec::new();
        let mut start = None;
        for export in instance.exports(&mut store) {
            let name = export.name();
            let index = |prefix: &str| {
                name.strip_prefix(prefix)
                    .and_then(|n| n.parse::<u32>().ok())
            };
            match (
                export.into_extern(),
                index(EXPORT_MEMORY_PREFIX),
                index(EXPORT_GLOBAL_PREFIX),
            ) {
                (Extern::Memory(m), Some(i), _) => memories.push((i, m)),
                (Extern::Global(g), _, Some(i)) => globals.push((i, g)),
                (Extern::Func(f), _, _) if name == EXPORT_START => start = Some(f),
                _ => {}
            }
        }
        if memories.is_empty() {
            return Err(CaptureError::NotInstrumented(
                "no memory exports found".into(),
            ));
        }
        memories.sort_by_key(|(i, _)| *i);
        globals.sort_by_key(|(i, _)| *i);
        Ok(StateHandles {
            memories: memories.into_iter().map(|(_, m)| m).collect(),
            globals: globals.into_iter().map(|(_, g)| g).collect(),
            start,
        })
    }

    /// The module's start function, if it had one: call it on a fresh instance, never on a
    /// restored one.
    pub fn start(&self) -> Option<&Func> {
        self.start.as_ref()
    }

    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self, store: impl AsContext) -> u64 {
        self.memories
            .iter()
            .map(|m| m.data_size(&store) as u64)
            .sum()
    }

    /// Read every mutable global.
    pub fn globals(&self, mut store: impl AsContextMut) -> Result<Vec<Value>, CaptureError> {
        self.globals
            .iter()
            .enumerate()
            .map(|(i, g)| match g.get(&mut store) {
                Val::I32(v) => Ok(Value::I32(v)),
                Val::I64(v) => Ok(Value::I64(v)),
                Val::F32(v) => Ok(Value::F32(v)),
                Val::F64(v) => Ok(Value::F64(v)),
                Val::V128(v) => Ok(Value::V128(v.as_u128().to_le_bytes())),
                _ => Err(CaptureError::RefGlobal(i)),
            })
            .collect()
    }

    /// Write every mutable global (types are checked against the instance).
    pub fn set_globals(
        &self,
        mut store: impl AsContextMut,
        values: &[Value],
    ) -> Result<(), CaptureError> {
        if values.len() != self.globals.len() {
            return Err(CaptureError::Mismatch(format!(
                "it has {} mutable globals, the module {}",
                values.len(),
                self.globals.len()
            )));
        }
        for (i, (g, v)) in self.globals.iter().zip(values).enumerate() {
            let val = match *v {
                Value::I32(x) => Val::I32(x),
                Value::I64(x) => Val::I64(x),
                Value::F32(x) => Val::F32(x),
                Value::F64(x) => Val::F64(x),
                Value::V128(x) => Val::V128(u128::from_le_bytes(x).into()),
            };
            g.set(&mut store, val).map_err(|e| {
                CaptureError::Mismatch(format!("global {i} ({v:?}) does not fit: {e}"))
            })?;
        }
        Ok(())
    }

    /// Capture the whole state. Call only at a quiescent point (no Wasm frame live).
    pub fn capture(
        &self,
        mut store: impl AsContextMut,
        meta: ComponentMeta,
        module_digest: Digest,
    ) -> Result<Snapshot, CaptureError> {
        let globals = self.globals(&mut store)?;
        let memories = self
            .memories
            .iter()
            .map(|m| MemoryImage::capture(m.data(&store)))
            .collect();
        Ok(Snapshot::new(meta, module_digest, memories, globals))
    }

    /// Every memory, for reading while the component runs ([`crate::LiveMemory`]); `None`
    /// where a memory might move when it grows (Wasmtime moves a memory only when it outgrows
    /// its reservation, which on 64-bit hosts covers any 32-bit memory whole).
    ///
    /// # Safety
    /// The caller must keep this instance (its store) alive while any of them is used.
    pub unsafe fn live(&self, store: impl AsContext) -> Option<Vec<crate::LiveMemory>> {
        if !cfg!(target_pointer_width = "64") {
            return None;
        }
        self.memories
            .iter()
            .map(|m| {
                let (ptr, len) = (m.data_ptr(&store), m.data_size(&store));
                let movable = m.ty(&store).is_64() || !(ptr as usize).is_multiple_of(PAGE_SIZE);
                // SAFETY: the memory stays where it is while the instance lives (see above),
                // which our caller promised.
                (!movable).then(|| unsafe { crate::LiveMemory::new(ptr, len) })
            })
            .collect()
    }

    /// The length of every memory, in bytes.
    pub fn memory_lens(&self, store: impl AsContext) -> Vec<usize> {
        self.memories.iter().map(|m| m.data_size(&store)).collect()
    }

    /// Copy memory `index` from `offset` into `dst`, as much as the memory holds; how many
    /// bytes. Lets a caller copy a large memory a piece at a time, between calls.
    pub fn copy_into(
        &self,
        store: impl AsContext,
        index: usize,
        offset: usize,
        dst: &mut [u8],
    ) -> usize {
        let Some(m) = self.memories.get(index) else {
            return 0;
        };
        let src = m.data(&store).get(offset..).unwrap_or_default();
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
        n
    }

    /// Pages of memory `i` written since `tracking` last looked; `None` if it cannot say
    /// (then every page counts as written).
    pub fn written(
        &self,
        store: impl AsContext,
        tracking: &mut Tracking,
        i: usize,
    ) -> Option<Vec<u32>> {
        tracking.written(i, self.memories.get(i)?.data(&store))
    }

    /// Copies of the pages of every memory written since `tracking` last looked (every page
    /// of a memory the kernel could not say for): the part of a pre-copy round that needs the
    /// memory, leaving the hashing to another thread.
    pub fn copy_written(
        &self,
        store: impl AsContext,
        tracking: &mut Tracking,
    ) -> Vec<WrittenPages> {
        self.memories
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mem = m.data(&store);
                let pages = tracking
                    .written(i, mem)
                    .unwrap_or_else(|| (0..(mem.len() / PAGE_SIZE) as u32).collect());
                let mut data = Vec::with_capacity(pages.len() * PAGE_SIZE);
                for &p in &pages {
                    let at = p as usize * PAGE_SIZE;
                    if let Some(page) = mem.get(at..at + PAGE_SIZE) {
                        data.extend_from_slice(page);
                    } else {
                        data.resize(data.len() + PAGE_SIZE, 0);
                    }
                }
                WrittenPages {
                    size: mem.len(),
                    pages,
                    data,
                }
            })
            .collect()
    }

    /// Start recording writes to every memory with the kernel's help, so that later rounds
    /// only look at written pages. Fails where the kernel cannot (then every round hashes
    /// every page).
    pub fn track(&self, store: impl AsContext) -> std::io::Result<Tracking> {
        #[cfg(target_os = "linux")]
        {
            let trackers = self
                .memories
                .iter()
                .map(|m| crate::WriteTracker::new(m.data_ptr(&store), m.data_size(&store)))
                .collect::<std::io::Result<_>>()?;
            Ok(Tracking { trackers })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = store;
            Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
        }
    }

    /// The pages of every memory that changed since `base` (a digest map per memory), with the
    /// new digest maps: one pre-copy round. With `tracking` (started before `base` was taken)
    /// only the pages written since are hashed; without, every page is.
    pub fn capture_changed(
        &self,
        store: impl AsContext,
        base: &[Vec<Digest>],
        mut tracking: Option<&mut Tracking>,
    ) -> (Vec<MemoryDelta>, Vec<Vec<Digest>>) {
        self.memories
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mem = m.data(&store);
                let base = base.get(i).map_or(&[][..], |v| v);
                match tracking.as_mut().and_then(|t| t.written(i, mem)) {
                    Some(written) => MemoryImage::changed_among(mem, base, written),
                    None => MemoryImage::changed_since(mem, base),
                }
            })
            .unzip()
    }

    /// Write a snapshot into a fresh instance (one on which nothing has run but instantiation).
    pub fn restore(
        &self,
        mut store: impl AsContextMut,
        snap: &Snapshot,
    ) -> Result<(), CaptureError> {
        // Globals first: they fail fast and cheaply on a snapshot of another module.
        self.set_globals(&mut store, &snap.globals)?;
        self.write_pages(store, &snap.memories, true)
    }

    /// Write pages into the memories, growing them as needed. With `whole`, the images are
    /// the entire state (pages they leave out are zero, as in a snapshot), as for a restore or
    /// the first round of a migration into a fresh instance; otherwise only the listed pages
    /// change (a later round).
    pub fn write_pages(
        &self,
        mut store: impl AsContextMut,
        images: &[MemoryImage],
        whole: bool,
    ) -> Result<(), CaptureError> {
        if images.len() != self.memories.len() {
            return Err(CaptureError::Mismatch(format!(
                "it has {} memories, the module {}",
                images.len(),
                self.memories.len()
            )));
        }
        for (i, (m, image)) in self.memories.iter().zip(images).enumerate() {
            let current = m.data_size(&store) as u64;
            if image.size < current {
                return Err(CaptureError::Mismatch(format!(
                    "memory {i} is {} bytes in the state sent but already {current} bytes here",
                    image.size
                )));
            }
            let grow = (image.size - current) / 65536;
            if grow > 0 {
                m.grow(&mut store, grow).map_err(|e| CaptureError::Grow {
                    memory: i,
                    bytes: image.size,
                    why: e.to_string(),
                })?;
            }
            let mem = m.data_mut(&mut store);
            if whole {
                image.write_into(mem, current as usize);
            } else {
                image.write_pages_into(mem);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument;
    use wasmtime::{Engine, Module, Store};

    const WAT: &str = r#"(module
        (memory 1)
        (global $n (mut i32) (i32.const 0))
        (global $started (mut i32) (i32.const 0))
        (func $start (global.set $started (i32.add (global.get $started) (i32.const 1))))
        (start $start)
        (func (export "bump") (result i32)
            (global.set $n (i32.add (global.get $n) (i32.const 1)))
            (i32.store (i32.mul (global.get $n) (i32.const 4096)) (global.get $n))
            (global.get $n))
        (func (export "started") (result i32) (global.get $started))
        (func (export "grow") (result i32) (memory.grow (i32.const 3)))
        (export "memory" (memory 0)))"#;

    #[test]
    fn restore_continues_without_rerunning_start() -> anyhow::Result<()> {
        let engine = Engine::default();
        let module = Module::new(&engine, instrument(&wat::parse_str(WAT)?)?)?;
        let meta = ComponentMeta {
            name: "t".into(),
            version: "1".into(),
            abi: 1,
            epoch: 1,
            ..Default::default()
        };

        let mut store = Store::new(&engine, ());
        let inst = Instance::new(&mut store, &module, &[])?;
        let h = StateHandles::new(&mut store, &inst)?;
        h.start().unwrap().call(&mut store, &[], &mut [])?;
        let bump = inst.get_typed_func::<(), i32>(&mut store, "bump")?;
        inst.get_typed_func::<(), i32>(&mut store, "grow")?
            .call(&mut store, ())?;
        for _ in 0..5 {
            bump.call(&mut store, ())?;
        }
        let snap = Snapshot::decode(h.capture(&mut store, meta, [0; 32])?.encode())?;
        assert_eq!(snap.memory_bytes(), 4 * 65536);

        let mut store2 = Store::new(&engine, ());
        let inst2 = Instance::new(&mut store2, &module, &[])?;
        let h2 = StateHandles::new(&mut store2, &inst2)?;
        h2.restore(&mut store2, &snap)?;
        let bump2 = inst2.get_typed_func::<(), i32>(&mut store2, "bump")?;
        assert_eq!(bump2.call(&mut store2, ())?, bump.call(&mut store, ())?);
        let started = inst2.get_typed_func::<(), i32>(&mut store2, "started")?;
        assert_eq!(
            started.call(&mut store2, ())?,
            1,
            "start ran once, before the checkpoint"
        );
        let m1 = inst.get_memory(&mut store, "memory").unwrap();
        let m2 = inst2.get_memory(&mut store2, "memory").unwrap();
        assert_eq!(m1.data(&store), m2.data(&store2));
        Ok(())
    }

    /// Pre-copy rounds with kernel write tracking (or without, where there is none) rebuild
    /// exactly the memory the source ends with, whatever is written between rounds, Wasm
    /// stores and memory growth included.
    #[test]
    fn tracked_rounds_rebuild_the_exact_memory() -> anyhow::Result<()> {
        let engine = Engine::default();
        let module = Module::new(&engine, instrument(&wat::parse_str(WAT)?)?)?;
        let mut store = Store::new(&engine, ());
        let inst = Instance::new(&mut store, &module, &[])?;
        let h = StateHandles::new(&mut store, &inst)?;
        let bump = inst.get_typed_func::<(), i32>(&mut store, "bump")?;
        let grow = inst.get_typed_func::<(), i32>(&mut store, "grow")?;
        let mem = inst.get_memory(&mut store, "memory").unwrap();
        grow.call(&mut store, ())?;

        let mut tracking = h.track(&store).ok();
        eprintln!("kernel write tracking: {}", tracking.is_some());
        let (mut image, mut base) = (Vec::new(), Vec::new());
        let mut seed = 7u64;
        for round in 0..12 {
            let (pages, maps) = h.capture_changed(
                &store,
                &base,
                if round == 0 { None } else { tracking.as_mut() },
            );
            // The receiving side: grow, then write the changed pages.
            image.resize(pages[0].size as usize, 0);
            pages[0].write_pages_into(&mut image);
            base = maps;
            // Between rounds: Wasm stores, host writes at pseudo-random spots, and growth.
            for _ in 0..3 {
                bump.call(&mut store, ())?;
            }
            let data = mem.data_mut(&mut store);
            for _ in 0..20 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % data.len();
                data[at] = data[at].wrapping_add(1 + round as u8);
            }
            if round == 5 {
                grow.call(&mut store, ())?;
            }
        }
        let (pages, _) = h.capture_changed(&store, &base, tracking.as_mut());
        image.resize(pages[0].size as usize, 0);
        pages[0].write_pages_into(&mut image);
        assert_eq!(image.as_slice(), mem.data(&store));
        Ok(())
    }
}
