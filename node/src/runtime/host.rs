//! What the host gives a component: the `continuum` imports (log, clock; in ABI v2 calls to
//! other components, timers, answers), a minimal WASI (clocks, random, stdout/stderr into the
//! node's log; no files, no sockets), and limits.

use continuum_guest::{Request, abi};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::{Caller, Extern, Linker, ResourceLimiter};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;

/// Per-instance host state.
pub struct HostState {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryCap,
    pub io: GuestIo,
    /// The id the next operation the guest starts gets (travels with the component).
    pub next_op: u64,
    /// Largest request body a call may carry.
    pub max_body: usize,
    /// The instance's memory, once instantiated: imports read the guest's buffers from it
    /// (looking the export up by name on every call costs more than the copy).
    pub memory: Option<wasmtime::Memory>,
}

impl HostState {
    pub fn new(name: &str, memory_cap: usize, max_body: usize) -> HostState {
        let name: Arc<str> = Arc::from(name);
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(name.clone(), "stdout"))
            .stderr(GuestLog::new(name, "stderr"))
            .build_p1();
        HostState {
            wasi,
            limiter: MemoryCap {
                cap: memory_cap,
                used: 0,
                hit: false,
            },
            io: GuestIo::default(),
            next_op: 1,
            max_body,
            memory: None,
        }
    }
}

/// What the guest asked of the host during one entry (ABI v2), for the component's thread to
/// carry out once the entry returned: the host never acts (or waits) inside the guest.
#[derive(Default, Debug)]
pub struct GuestIo {
    /// Request tasks that finished: (task, encoded response).
    pub responses: Vec<(u32, Vec<u8>)>,
    pub ops: Vec<NewOp>,
    /// Operations whose futures the guest dropped.
    pub cancelled: Vec<u64>,
    /// The tick task finished: milliseconds to the next tick, or -1.
    pub tick_done: Option<i32>,
}

impl GuestIo {
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
            && self.ops.is_empty()
            && self.cancelled.is_empty()
            && self.tick_done.is_none()
    }
}

/// An operation the guest started.
#[derive(Debug)]
pub struct NewOp {
    pub op: u64,
    /// The task that started it (0: the tick).
    pub task: u32,
    pub kind: OpStart,
}

#[derive(Debug)]
pub enum OpStart {
    /// A request to component `name`; `Err` says why it cannot be sent (a bad name, a request
    /// that does not decode or is too large), which the guest gets back as a refusal.
    Call {
        name: String,
        req: Result<Request, String>,
    },
    Timer(Duration),
}

/// More operations or answers than this in one entry is a runaway guest: it traps.
pub const MAX_IO_PER_ENTRY: usize = 4096;

/// Refuses memory growth past the node's cap, over all of the component's memories together
/// (a module with four memories is held to the cap like one with one, and so its snapshot
/// always restores), and remembers that it did, so that the trap that usually follows (an
/// allocation failure in the guest) is reported as what it is.
pub struct MemoryCap {
    pub cap: usize,
    /// Bytes of linear memory granted so far, every memory counted (Wasmtime asks here when a
    /// memory is created, too).
    pub used: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self.used.saturating_add(desired.saturating_sub(current));
        if used > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.used = used;
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

/// `len` bytes of the guest's memory at `ptr`, if they lie inside it.
fn guest_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = match caller.data().memory {
        Some(m) => m,
        None => match caller.get_export("memory") {
            Some(Extern::Memory(m)) => m,
            _ => return None,
        },
    };
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&caller)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

fn runaway(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "the component {what} more than {MAX_IO_PER_ENTRY} times in one call"
    ))
}

/// Add the `continuum` and WASI imports.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut HostState| &mut s.wasi)?;
    linker.func_wrap("continuum", "now_ms", || now_ms() as i64)?;
    linker.func_wrap(
        "continuum",
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            let Some(bytes) = guest_bytes(&mut caller, ptr, len.min(4096)) else {
                return;
            };
            let msg = String::from_utf8_lossy(&bytes);
            match level {
                0 | 1 => tracing::debug!(target: "guest", "{msg}"),
                2 => tracing::info!(target: "guest", "{msg}"),
                3 => tracing::warn!(target: "guest", "{msg}"),
                _ => tracing::error!(target: "guest", "{msg}"),
            }
        },
    )?;
    linker.func_wrap(
        "continuum",
        "respond",
        |mut caller: Caller<'_, HostState>,
         task: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<()> {
            if caller.data().io.responses.len() >= MAX_IO_PER_ENTRY {
                return Err(runaway("answered"));
            }
            // An answer outside its memory is malformed: it decodes as nothing, so a 502.
            let bytes = guest_bytes(&mut caller, ptr, len).unwrap_or_default();
            caller.data_mut().io.responses.push((task as u32, bytes));
            Ok(())
        },
    )?;
    linker.func_wrap(
        "continuum",
        "call",
        |mut caller: Caller<'_, HostState>,
         task: i32,
         name_ptr: i32,
         name_len: i32,
         req_ptr: i32,
         req_len: i32|
         -> wasmtime::Result<i64> {
            let max = caller.data().max_body;
            let name = guest_bytes(&mut caller, name_ptr, name_len.min(256))
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let req = if req_len as u32 as usize > max + 64 * 1024 {
                Err(format!("the request is larger than this node's limit of {max} bytes"))
            } else {
                match guest_bytes(&mut caller, req_ptr, req_len) {
                    Some(b) => abi::decode_request(&b)
                        .map_err(|e| format!("the request did not decode: {e}"))
                        .and_then(|r| {
                            if r.body.len() > max {
                                Err(format!(
                                    "the request body is larger than this node's limit of {max} bytes"
                                ))
                            } else {
                                Ok(r)
                            }
                        }),
                    None => Err("the request lies outside the component's memory".into()),
                }
            };
            start_op(caller.data_mut(), task, OpStart::Call { name, req })
        },
    )?;
    linker.func_wrap(
        "continuum",
        "sleep",
        |mut caller: Caller<'_, HostState>, task: i32, ms: i32| -> wasmtime::Result<i64> {
            let d = Duration::from_millis(ms.max(0) as u64);
            start_op(caller.data_mut(), task, OpStart::Timer(d))
        },
    )?;
    linker.func_wrap(
        "continuum",
        "cancel",
        |mut caller: Caller<'_, HostState>, op: i64| -> wasmtime::Result<()> {
            let io = &mut caller.data_mut().io;
            if io.cancelled.len() >= MAX_IO_PER_ENTRY {
                return Err(runaway("cancelled"));
            }
            io.cancelled.push(op as u64);
            Ok(())
        },
    )?;
    linker.func_wrap(
        "continuum",
        "tick_done",
        |mut caller: Caller<'_, HostState>, next: i32| {
            caller.data_mut().io.tick_done = Some(next);
        },
    )?;
    Ok(())
}

fn start_op(s: &mut HostState, task: i32, kind: OpStart) -> wasmtime::Result<i64> {
    if s.io.ops.len() >= MAX_IO_PER_ENTRY {
        return Err(runaway("started a call or a timer"));
    }
    let op = s.next_op;
    s.next_op += 1;
    s.io.ops.push(NewOp {
        op,
        task: task as u32,
        kind,
    });
    Ok(op as i64)
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
