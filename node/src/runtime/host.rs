//! What the host gives a component: the `continuum` imports (log, clock), a minimal WASI
//! (clocks, random, stdout/stderr into the node's log; no files, no sockets), and limits.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime::{Caller, Extern, Linker, ResourceLimiter};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;

/// Per-instance host state.
pub struct HostState {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryCap,
}

impl HostState {
    pub fn new(name: &str, memory_cap: usize) -> HostState {
        let name: Arc<str> = Arc::from(name);
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(name.clone(), "stdout"))
            .stderr(GuestLog::new(name, "stderr"))
            .build_p1();
        HostState {
            wasi,
            limiter: MemoryCap {
                cap: memory_cap,
                hit: false,
            },
        }
    }
}

/// Refuses memory growth past the node's cap and remembers that it did, so that the trap that
/// usually follows (an allocation failure in the guest) is reported as what it is.
pub struct MemoryCap {
    pub cap: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Add the `continuum` and WASI imports.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut HostState| &mut s.wasi)?;
    linker.func_wrap("continuum", "now_ms", || now_ms() as i64)?;
    linker.func_wrap(
        "continuum",
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
                return;
            };
            let data = mem.data(&caller);
            let (ptr, len) = (ptr as u32 as usize, (len as u32 as usize).min(4096));
            let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else {
                return;
            };
            let msg = String::from_utf8_lossy(bytes);
            match level {
                0 | 1 => tracing::debug!(target: "guest", "{msg}"),
                2 => tracing::info!(target: "guest", "{msg}"),
                3 => tracing::warn!(target: "guest", "{msg}"),
                _ => tracing::error!(target: "guest", "{msg}"),
            }
        },
    )?;
    Ok(())
}

/// Wall-clock milliseconds since the Unix epoch: the time base components see on every node.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A guest's stdout or stderr, written line by line into the node's log.
#[derive(Clone)]
struct GuestLog {
    component: Arc<str>,
    stream: &'static str,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl GuestLog {
    fn new(component: Arc<str>, stream: &'static str) -> Self {
        GuestLog {
            component,
            stream,
            partial: Arc::default(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        partial.extend_from_slice(buf);
        while let Some(at) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            tracing::info!(target: "guest", component = %self.component, stream = self.stream, "{text}");
        }
        if partial.len() > 4096 {
            let text = String::from_utf8_lossy(&partial).into_owned();
            partial.clear();
            tracing::info!(target: "guest", component = %self.component, stream = self.stream, "{text}");
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
