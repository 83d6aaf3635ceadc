//! `continuum-guest`: write a Continuum component in Rust.
//!
//! A component is a long-lived WebAssembly instance that keeps its state in its own memory and
//! answers HTTP requests. The host may checkpoint it between any two calls and restore it on
//! another node, so everything it needs must live in the component value itself:
//!
//! ```ignore
//! use continuum_guest::{Component, Request, Response, export};
//!
//! #[derive(Default)]
//! struct Counter { n: u64 }
//!
//! impl Component for Counter {
//!     fn handle(&mut self, req: &Request) -> Response {
//!         match (req.method.as_str(), req.path()) {
//!             ("POST", "/incr") => { self.n += 1; Response::text(200, self.n.to_string()) }
//!             ("GET", "/count") => Response::text(200, self.n.to_string()),
//!             _ => Response::not_found(),
//!         }
//!     }
//! }
//! export!(Counter);
//! ```
//!
//! A component that calls other components by name is an [`AsyncComponent`]: its `handle` is an
//! `async fn` that awaits [`call`] and [`sleep`]. While it waits no Wasm code of it runs: the
//! waiting future lives in linear memory, so the host can serve its other requests, checkpoint
//! it or move it to another node in the meantime.
//!
//! ```ignore
//! use continuum_guest::{AsyncComponent, Request, Response, call, export_async};
//!
//! #[derive(Default)]
//! struct Doubler;
//!
//! impl AsyncComponent for Doubler {
//!     async fn handle(&self, _req: Request) -> Response {
//!         match call("counter", Request::get("/count")).await {
//!             Ok(r) => Response::text(200, (2 * r.body_text().parse::<u64>().unwrap_or(0)).to_string()),
//!             Err(e) => e.into(),
//!         }
//!     }
//! }
//! export_async!(Doubler);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip1` as a `cdylib`. See `guest/README.md` for the
//! ABI underneath.

pub mod abi;
mod exec;
#[doc(hidden)]
pub mod rt;
mod shared;

pub use exec::{Call, Sleep, call, sleep};
pub use shared::Shared;

/// ABI version this SDK speaks; the host checks for the `continuum_abi_v2` export (and still
/// runs modules that export `continuum_abi_v1`).
pub const ABI_VERSION: u32 = 2;

/// An HTTP request, as the component sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// Path and query below the component's name: `/c/counter/incr?x=1` arrives as `/incr?x=1`.
    pub target: String,
    /// Header names are lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The first value of a query parameter (no percent-decoding).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A request to send with [`call`]: `method` and `target` (path and query).
    pub fn new(method: &str, target: impl Into<String>) -> Request {
        Request {
            method: method.to_string(),
            target: target.into(),
            ..Request::default()
        }
    }

    pub fn get(target: impl Into<String>) -> Request {
        Request::new("GET", target)
    }

    pub fn post(target: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
        Request::new("POST", target).with_body(body)
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }
}

/// An HTTP response from the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, body.into()).header("content-type", "text/plain; charset=utf-8")
    }

    /// An `application/json` response; `body` must already be JSON.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, body.into()).header("content-type", "application/json")
    }

    pub fn not_found() -> Response {
        Response::text(404, "not found\n")
    }

    pub fn bad_request(why: impl Into<String>) -> Response {
        Response::text(400, why)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The first value of a header, by lower-case name.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Why a [`call`] got no answer from the component it named. Errors are values: each maps to
/// the HTTP status a gateway would answer with, so a component can pass it on as it is
/// (`Response::from(err)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No component of that name in the mesh (404).
    NotFound(String),
    /// The call's deadline passed (504): the caller's own remaining deadline, capped by the
    /// node's `--call-timeout`.
    Deadline(String),
    /// The call chain grew deeper than the mesh allows, or came back to a component that cannot
    /// take it now (508): the call fails at once instead of deadlocking.
    Loop(String),
    /// Refused or failed on the way, with the status that says why: 503 (overloaded, too many
    /// calls in flight), 502 (the callee trapped, its host did not answer), 413, 400...
    Refused(u16, String),
}

impl CallError {
    pub fn status(&self) -> u16 {
        match self {
            CallError::NotFound(_) => 404,
            CallError::Deadline(_) => 504,
            CallError::Loop(_) => 508,
            CallError::Refused(status, _) => *status,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CallError::NotFound(m)
            | CallError::Deadline(m)
            | CallError::Loop(m)
            | CallError::Refused(_, m) => m,
        }
    }

    /// Its tag in the ABI encoding.
    pub fn kind(&self) -> u32 {
        match self {
            CallError::NotFound(_) => 1,
            CallError::Deadline(_) => 2,
            CallError::Loop(_) => 3,
            CallError::Refused(..) => 4,
        }
    }

    pub fn from_parts(kind: u32, status: u16, message: String) -> Option<CallError> {
        Some(match kind {
            1 => CallError::NotFound(message),
            2 => CallError::Deadline(message),
            3 => CallError::Loop(message),
            4 => CallError::Refused(status, message),
            _ => return None,
        })
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for Response {
    fn from(e: CallError) -> Response {
        let mut body = e.message().to_string();
        body.push('\n');
        Response::text(e.status(), body)
    }
}

/// What a component does. One value of the type lives for the whole life of the component,
/// across checkpoints and migrations.
pub trait Component: Default + 'static {
    /// Answer one request. Calls are serialised: no other call runs meanwhile.
    fn handle(&mut self, req: &Request) -> Response;

    /// A periodic control task. Called once when the component starts, then again after the
    /// number of milliseconds it returns; `None` stops the ticks.
    fn tick(&mut self, _now_ms: u64) -> Option<u32> {
        None
    }

    /// Called on the restored instance after a checkpoint was restored (on another node, or
    /// after a restart): a place to drop caches of things that do not travel, such as times.
    fn on_restore(&mut self) {}

    /// The layout of the state [`Component::save`] writes; a newer version's
    /// [`Component::upgrade`] is told which one it reads.
    const STATE_VERSION: u32 = 1;

    /// Live update, old side: the state, for a newer version of the component to take over
    /// (`continuum update`). `None`, the default: this component cannot hand over its state, so
    /// it cannot be updated live.
    fn save(&self) -> Option<Vec<u8>> {
        None
    }

    /// Live update, new side: build the component from what [`Component::save`] of state layout
    /// `from_version` wrote. An error or a panic rolls the update back: the old version goes on
    /// with its state untouched.
    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self, String>
    where
        Self: Sized,
    {
        let _ = saved;
        Err(rt::cannot_upgrade(from_version))
    }
}

/// A component that calls other components (or waits for time to pass) while it serves. Many
/// requests may be waiting at once in one instance, so `handle` takes `&self`: keep mutable
/// state in [`std::cell::Cell`] or [`Shared`] fields (the instance is single-threaded, they cost
/// nothing). One value of the type lives for the whole life of the component, across
/// checkpoints and migrations, and so do the futures of the requests it is waiting on.
#[allow(async_fn_in_trait)]
pub trait AsyncComponent: Default + 'static {
    /// Answer one request; await [`call`] and [`sleep`] as needed. Other requests (and ticks)
    /// run while this one waits.
    async fn handle(&self, req: Request) -> Response;

    /// A periodic control task, which may await calls too. Called once when the component
    /// starts, then again the number of milliseconds it returns after it finished; `None` stops
    /// the ticks. Never two at once.
    async fn tick(&self, _now_ms: u64) -> Option<u32> {
        None
    }

    /// As [`Component::on_restore`].
    fn on_restore(&self) {}

    /// As [`Component::STATE_VERSION`].
    const STATE_VERSION: u32 = 1;

    /// As [`Component::save`]. The host asks only once no request is in flight: a new version
    /// cannot take over this version's futures.
    fn save(&self) -> Option<Vec<u8>> {
        None
    }

    /// As [`Component::upgrade`].
    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self, String>
    where
        Self: Sized,
    {
        let _ = saved;
        Err(rt::cannot_upgrade(from_version))
    }
}

/// Milliseconds since the Unix epoch, from the host (the same clock on every node of a mesh,
/// within NTP's accuracy).
pub fn now_ms() -> u64 {
    rt::now_ms()
}

/// Write a line to the host's log, tagged with the component's name.
pub fn log(msg: &str) {
    rt::log(msg)
}

/// Export a [`Component`] type through the continuum ABI. Use once per crate.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        $crate::__export!($ty, $crate::rt::Blocking<$ty>);
    };
}

/// Export an [`AsyncComponent`] type through the continuum ABI. Use once per crate.
#[macro_export]
macro_rules! export_async {
    ($ty:ty) => {
        $crate::__export!($ty, $crate::rt::Tasks<$ty>);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($ty:ty, $g:ty) => {
        static __CONTINUUM_STATE: $crate::rt::Slot<$ty> = $crate::rt::Slot::new();

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_abi_v2() {}

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_alloc(len: i32) -> i32 {
            $crate::rt::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_start(task: i32, ptr: i32, len: i32) {
            $crate::rt::start::<$g>(&__CONTINUUM_STATE, task, ptr, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_wake(op: i64, ptr: i32, len: i32) {
            $crate::rt::wake(op, ptr, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_cancel(task: i32, forget: i32) {
            $crate::rt::cancel(task, forget)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_tasks() -> i32 {
            $crate::rt::tasks()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_current() -> i32 {
            $crate::rt::current()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_tick(now_ms: i64) -> i32 {
            $crate::rt::tick::<$g>(&__CONTINUUM_STATE, now_ms)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_on_restore() {
            <$g as $crate::rt::Guest>::on_restore(&__CONTINUUM_STATE)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_state_version() -> i32 {
            <$g as $crate::rt::Guest>::STATE_VERSION as i32
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_save() -> i64 {
            $crate::rt::save::<$g>(&__CONTINUUM_STATE)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_upgrade(from_version: i32, ptr: i32, len: i32) -> i64 {
            $crate::rt::upgrade::<$g>(&__CONTINUUM_STATE, from_version, ptr, len)
        }
    };
}
