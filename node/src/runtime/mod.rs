//! The Wasmtime host: one engine for the node, modules compiled once and cached by digest,
//! instances with a memory cap and a per-call deadline, each driven by its own thread.

mod actor;
pub mod carried;
mod engine;
mod host;
mod instance;
pub mod router;

pub use actor::{Answer, Back, ComponentHandle, First, LiveRound, ReplyTo, Stats, Unavailable};
pub use carried::Carried;
pub use engine::{EngineError, EngineKind};
pub use host::now_ms;
pub use instance::{CallError, Instance};
pub use router::{CallCtx, Router, error_kind, error_response};

use crate::datadir::write_atomic;
use continuum_migrate::{Digest, InstrumentError, digest_hex, instrument};
use host::HostState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wasmtime::{Engine, InstancePre, Linker, Module};

/// The engine's epoch advances this often; call deadlines are counted in these ticks.
pub const EPOCH: Duration = Duration::from_millis(10);

/// Marker exports of the guest ABI versions (see guest/README.md).
pub const ABI_MARKER: &str = "continuum_abi_v1";
pub const ABI_V2_MARKER: &str = "continuum_abi_v2";

#[derive(Clone, Debug)]
pub struct RuntimeLimits {
    pub memory_cap: usize,
    pub call_timeout: Duration,
    pub queue_depth: usize,
    /// Largest request body (also of a call a component makes).
    pub max_body: usize,
    /// Calls one component may have in flight; more are refused (503) at once.
    pub max_calls: usize,
    /// Longest chain of calls between components.
    pub max_depth: usize,
}

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Instrument(#[from] InstrumentError),
    #[error(
        "module lacks the continuum ABI export `{0}`: build it with the continuum-guest SDK and its export! macro (see guest/README.md)"
    )]
    NoAbi(&'static str),
    #[error("module needs imports this host does not provide: {0}")]
    Imports(String),
    #[error("module failed to compile: {0}")]
    Compile(String),
    #[error("module {0} is not on this node")]
    Unknown(String),
    #[error("storing the module: {0}")]
    Io(String),
    #[error(
        "this node does not compile Wasm (--no-compile): it runs only modules precompiled for it, and {0} is not in its modules directory; make it elsewhere with `continuum compile MODULE --engine {1} --arch {2}` and copy it there"
    )]
    NotPrecompiled(String, &'static str, &'static str),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A module ready to instantiate.
pub struct LoadedModule {
    pub digest: Digest,
    /// Size of the original module in bytes.
    pub size: usize,
    pub pre: InstancePre<HostState>,
}

pub struct Runtime {
    engine: Engine,
    kind: EngineKind,
    linker: Linker<HostState>,
    /// Where original and compiled modules are kept; `None` keeps them in memory only.
    modules_dir: Option<PathBuf>,
    /// Modules compiled and still in use (by a component, a migration staged here): one that
    /// nobody holds any more is freed, so peers' modules cannot pile up in memory. Loading it
    /// again reads the compiled code back from disk.
    loaded: Mutex<HashMap<Digest, Weak<LoadedModule>>>,
    /// False on a node that must not spend its CPU and memory compiling (a small board): it
    /// runs only what `continuum compile` made for it ahead of time.
    compiles: bool,
    pub limits: RuntimeLimits,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(
        limits: RuntimeLimits,
        modules_dir: Option<PathBuf>,
        kind: EngineKind,
    ) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&kind.config()?)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;

        // The epoch clock behind call deadlines; stops when the runtime goes away.
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                crate::priority::clock();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH);
                    e.increment_epoch();
                }
            })?;
        Ok(Runtime {
            engine,
            kind,
            linker,
            modules_dir,
            loaded: Mutex::default(),
            compiles: true,
            limits,
            stop,
        })
    }

    /// A node that never compiles: it loads only code precompiled for it (`continuum compile`)
    /// and refuses any other module, saying what to make.
    pub fn compiling(mut self, compiles: bool) -> Self {
        self.compiles = compiles;
        self
    }

    /// What runs this node's Wasm.
    pub fn engine_kind(&self) -> EngineKind {
        self.kind
    }

    fn compiled_path(&self, dir: &std::path::Path, digest: &Digest) -> PathBuf {
        dir.join(compiled_name(digest, self.kind, std::env::consts::ARCH))
    }

    /// Deadline of one call in epoch ticks (rounded up, plus the tick already under way).
    pub fn deadline_ticks(&self) -> u64 {
        self.limits
            .call_timeout
            .as_millis()
            .div_ceil(EPOCH.as_millis()) as u64
            + 1
    }

    /// Validate, instrument and compile a module (or find it compiled already), and keep its
    /// original bytes by digest.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        let digest = *blake3::hash(wasm).as_bytes();
        if let Some(m) = self.in_use(&digest) {
            return Ok(m);
        }
        let (module, compiled) = self.compile(&digest, wasm)?;
        let needed: &[&'static str] = if module.get_export(ABI_V2_MARKER).is_some() {
            &[
                "continuum_alloc",
                "continuum_start",
                "continuum_wake",
                "continuum_cancel",
                "continuum_current",
                "continuum_tasks",
                "memory",
            ]
        } else {
            &[ABI_MARKER, "continuum_alloc", "continuum_handle", "memory"]
        };
        for &name in needed {
            if module.get_export(name).is_none() {
                return Err(LoadError::NoAbi(name));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        // Stored only once it passed every check: a refused module leaves nothing behind.
        if let Some(dir) = &self.modules_dir {
            let path = dir.join(format!("{}.wasm", digest_hex(&digest)));
            if !path.exists() {
                write_atomic(&path, wasm).map_err(|e| LoadError::Io(format!("{e:#}")))?;
            }
            if let Some(code) = compiled
                && let Err(e) = write_atomic(&self.compiled_path(dir, &digest), &code)
            {
                tracing::warn!("could not cache compiled module: {e:#}");
            }
        }
        let loaded = Arc::new(LoadedModule {
            digest,
            size: wasm.len(),
            pre,
        });
        let mut map = self.loaded.lock().unwrap();
        map.retain(|_, m| m.strong_count() > 0);
        map.insert(digest, Arc::downgrade(&loaded));
        Ok(loaded)
    }

    fn in_use(&self, digest: &Digest) -> Option<Arc<LoadedModule>> {
        self.loaded.lock().unwrap().get(digest)?.upgrade()
    }

    /// A module this node stored before, by digest.
    pub fn load_digest(&self, digest: &Digest) -> Result<Arc<LoadedModule>, LoadError> {
        if let Some(m) = self.in_use(digest) {
            return Ok(m);
        }
        let bytes = self.module_bytes(digest)?;
        self.load(&bytes)
    }

    /// Delete the stored modules (original and compiled) that nothing here uses and that no
    /// saved state in `keep` needs; how many were deleted. A `--no-compile` node keeps all
    /// compiled code: it cannot make it again.
    pub fn sweep(&self, keep: &std::collections::HashSet<Digest>) -> usize {
        let Some(dir) = &self.modules_dir else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let map = self.loaded.lock().unwrap();
        let mut deleted = 0;
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            // On a node that does not compile, compiled code is its operator's, not a cache.
            if !self.compiles && path.extension().is_some_and(|e| e == "cwasm") {
                continue;
            }
            // `DIGEST.wasm` or `DIGEST.ENGINE-ARCH.cwasm`.
            let Some(digest): Option<Digest> = path
                .file_name()
                .and_then(|s| s.to_str()?.split('.').next())
                .and_then(|hex| hex::decode(hex).ok()?.try_into().ok())
            else {
                continue;
            };
            let used = map.get(&digest).is_some_and(|m| m.strong_count() > 0);
            if !used && !keep.contains(&digest) && std::fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }

    /// The original bytes of a stored module.
    pub fn module_bytes(&self, digest: &Digest) -> Result<Vec<u8>, LoadError> {
        let dir = self
            .modules_dir
            .as_ref()
            .ok_or_else(|| LoadError::Unknown(digest_hex(digest)))?;
        std::fs::read(dir.join(format!("{}.wasm", digest_hex(digest))))
            .map_err(|_| LoadError::Unknown(digest_hex(digest)))
    }

    /// The module compiled (or read back compiled); with the code to cache if it was compiled
    /// now.
    fn compile(
        &self,
        digest: &Digest,
        wasm: &[u8],
    ) -> Result<(Module, Option<Vec<u8>>), LoadError> {
        let cached = self
            .modules_dir
            .as_ref()
            .map(|d| self.compiled_path(d, digest));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file is one this node wrote with `Module::serialize` into its own
            // data directory, or one its operator put there from `continuum compile` (never
            // one from a peer); Wasmtime checks that it matches this engine's version and
            // settings and refuses it otherwise (then we compile afresh).
            match unsafe { Module::deserialize_file(&self.engine, path) } {
                Ok(m) => return Ok((m, None)),
                Err(e) => {
                    tracing::warn!("cached code {} unusable: {e}", path.display())
                }
            }
        }
        if !self.compiles {
            return Err(LoadError::NotPrecompiled(
                compiled_name(digest, self.kind, std::env::consts::ARCH),
                self.kind.name(),
                std::env::consts::ARCH,
            ));
        }
        let instrumented = instrument(wasm)?;
        let module = Module::new(&self.engine, &instrumented)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let code = cached.and_then(|_| module.serialize().ok());
        Ok((module, code))
    }
}

/// The file a module's code compiled for an engine on an architecture is kept in: a node that
/// changes engine, or a data directory moved to another host, compiles afresh instead of
/// handing Wasmtime code it would refuse.
pub fn compiled_name(digest: &Digest, kind: EngineKind, arch: &str) -> String {
    format!("{}.{}-{arch}.cwasm", digest_hex(digest), kind.name())
}

/// A module compiled ahead of time for a node of `arch` running `kind`, exactly as that node
/// would compile it (instrumented, the same settings): its file name there and its bytes.
pub fn precompile(
    wasm: &[u8],
    kind: EngineKind,
    arch: &str,
) -> Result<(String, Vec<u8>), LoadError> {
    let engine = Engine::new(&kind.config_for(arch)?)
        .map_err(|e| EngineError::Wasmtime(format!("{e:#}")))?;
    let code = engine
        .precompile_module(&instrument(wasm)?)
        .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    let digest = *blake3::hash(wasm).as_bytes();
    Ok((compiled_name(&digest, kind, arch), code))
}
