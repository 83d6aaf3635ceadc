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
//! Build with `cargo build --target wasm32-wasip1` as a `cdylib`. See `guest/README.md` for the
//! ABI underneath.

pub mod abi;
#[doc(hidden)]
pub mod rt;

/// ABI version this SDK speaks; the host checks for the `continuum_abi_v1` export.
pub const ABI_VERSION: u32 = 1;

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
        Err(format!(
            "this version cannot take over state of layout {from_version}"
        ))
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
        static __CONTINUUM_STATE: $crate::rt::Slot<$ty> = $crate::rt::Slot::new();

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_abi_v1() {}

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_alloc(len: i32) -> i32 {
            $crate::rt::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_handle(ptr: i32, len: i32) -> i64 {
            $crate::rt::handle(&__CONTINUUM_STATE, ptr, len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_tick(now_ms: i64) -> i32 {
            $crate::rt::tick(&__CONTINUUM_STATE, now_ms)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_on_restore() {
            $crate::rt::on_restore(&__CONTINUUM_STATE)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_state_version() -> i32 {
            <$ty as $crate::Component>::STATE_VERSION as i32
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_save() -> i64 {
            $crate::rt::save(&__CONTINUUM_STATE)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn continuum_upgrade(from_version: i32, ptr: i32, len: i32) -> i64 {
            $crate::rt::upgrade(&__CONTINUUM_STATE, from_version, ptr, len)
        }
    };
}
