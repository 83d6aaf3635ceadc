//! What `export!` and `export_async!` expand to call: the guest half of the ABI. Not a public
//! API.

use crate::exec::{self, Out, TICK};
use crate::{AsyncComponent, Component, Request, Response, abi};
use std::cell::UnsafeCell;
use std::marker::PhantomData;

/// Holds a value the guest keeps between calls. Not a `RefCell`: if the host cuts a call short
/// (deadline, trap), a borrow flag would stay set and poison every later call; the host
/// serialises calls, so there is never a second borrower.
pub struct Slot<T>(UnsafeCell<Option<T>>);

// SAFETY: a Wasm instance is single-threaded and the host serialises calls into it.
unsafe impl<T> Sync for Slot<T> {}

impl<T> Slot<T> {
    pub const fn new() -> Self {
        Slot(UnsafeCell::new(None))
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Default> Slot<T> {
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn get(&self) -> &mut T {
        // SAFETY: see the `Sync` impl; calls never nest, and callers let go of the reference
        // before anything else can ask for one.
        unsafe { (*self.0.get()).get_or_insert_with(T::default) }
    }

    /// A shared reference, for values that futures borrow for as long as they live: never
    /// makes a `&mut` once the value exists.
    fn shared(&self) -> &T {
        // SAFETY: as `get`; the value is written only while it does not exist yet, so no
        // reference to it can be live then.
        unsafe {
            if (*self.0.get()).is_none() {
                *self.0.get() = Some(T::default());
            }
            (*self.0.get()).as_ref().expect("set above")
        }
    }

    /// Replace the value; the caller makes sure nothing borrows it.
    unsafe fn set(&self, v: T) {
        // SAFETY: the caller's promise.
        unsafe { *self.0.get() = Some(v) };
    }
}

/// One way of being a component: a [`Component`] (synchronous) or an [`AsyncComponent`].
pub trait Guest {
    type State: Default + 'static;
    const STATE_VERSION: u32;
    fn start(state: &'static Slot<Self::State>, task: u32, req: Request);
    /// Run the tick: milliseconds to the next one, -1 for none, -2 if it is still waiting
    /// (it reports through `tick_done` once it finishes).
    fn tick(state: &'static Slot<Self::State>, now_ms: u64) -> i32;
    fn on_restore(state: &'static Slot<Self::State>);
    fn save(state: &'static Slot<Self::State>) -> Option<Vec<u8>>;
    fn upgrade(from_version: u32, saved: &[u8]) -> Result<Self::State, String>;
}

/// A [`Component`] through the v2 ABI: every request finishes within its entry.
pub struct Blocking<C>(PhantomData<C>);

/// An [`AsyncComponent`]: requests are tasks of the executor.
pub struct Tasks<C>(PhantomData<C>);

impl<C: Component> Guest for Blocking<C> {
    type State = C;
    const STATE_VERSION: u32 = C::STATE_VERSION;

    fn start(state: &'static Slot<C>, task: u32, req: Request) {
        let resp = state.get().handle(&req);
        host::respond(task, &abi::encode_response(&resp));
    }

    fn tick(state: &'static Slot<C>, now_ms: u64) -> i32 {
        exec::tick_code(state.get().tick(now_ms))
    }

    fn on_restore(state: &'static Slot<C>) {
        state.get().on_restore()
    }

    fn save(state: &'static Slot<C>) -> Option<Vec<u8>> {
        state.get().save()
    }

    fn upgrade(from_version: u32, saved: &[u8]) -> Result<C, String> {
        C::upgrade(from_version, saved)
    }
}

impl<C: AsyncComponent> Guest for Tasks<C> {
    type State = C;
    const STATE_VERSION: u32 = C::STATE_VERSION;

    fn start(state: &'static Slot<C>, task: u32, req: Request) {
        let c = state.shared();
        exec::spawn(task, async move { Out::Response(c.handle(req).await) });
        exec::run(false);
    }

    fn tick(state: &'static Slot<C>, now_ms: u64) -> i32 {
        let c = state.shared();
        exec::spawn(TICK, async move { Out::Tick(c.tick(now_ms).await) });
        match exec::run(true) {
            Some(next) => exec::tick_code(next),
            None => -2,
        }
    }

    fn on_restore(state: &'static Slot<C>) {
        state.shared().on_restore()
    }

    fn save(state: &'static Slot<C>) -> Option<Vec<u8>> {
        state.shared().save()
    }

    fn upgrade(from_version: u32, saved: &[u8]) -> Result<C, String> {
        C::upgrade(from_version, saved)
    }
}

/// What a version without `upgrade` says to a live update.
pub fn cannot_upgrade(from_version: u32) -> String {
    format!("this version cannot take over state of layout {from_version}")
}

pub fn alloc(len: i32) -> i32 {
    let mut buf = Vec::<u8>::with_capacity(len.max(0) as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

/// Take ownership of the buffer the host wrote into (from `alloc(len)`).
fn take(ptr: i32, len: i32) -> Vec<u8> {
    if len <= 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `len` bytes into the buffer that `alloc(len)` returned.
    unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, len as usize) }
}

pub fn start<G: Guest>(state: &'static Slot<G::State>, task: i32, ptr: i32, len: i32) {
    crate::shared::enter();
    exec::set_current(task as u32);
    let bytes = take(ptr, len);
    match abi::decode_request(&bytes) {
        Ok(req) => G::start(state, task as u32, req),
        Err(e) => host::respond(
            task as u32,
            &abi::encode_response(&Response::text(
                400,
                format!("request did not decode: {e}\n"),
            )),
        ),
    }
}

pub fn wake(op: i64, ptr: i32, len: i32) {
    crate::shared::enter();
    exec::deliver(op as u64, take(ptr, len));
}

pub fn cancel(task: i32, forget: i32) {
    crate::shared::enter();
    exec::cancel(task, forget != 0);
}

pub fn tasks() -> i32 {
    exec::tasks() as i32
}

pub fn current() -> i32 {
    exec::current() as i32
}

pub fn tick<G: Guest>(state: &'static Slot<G::State>, now_ms: i64) -> i32 {
    crate::shared::enter();
    exec::set_current(TICK);
    G::tick(state, now_ms.max(0) as u64)
}

/// Leave `bytes` where the host can copy them from until the next call; their (ptr, len).
fn hand_out(bytes: Vec<u8>) -> i64 {
    static OUT: Slot<Vec<u8>> = Slot::new();
    let out = OUT.get();
    *out = bytes;
    ((out.as_ptr() as usize as i64) << 32) | out.len() as i64
}

/// The saved state as (ptr, len), or -1 if the component cannot hand it over.
pub fn save<G: Guest>(state: &'static Slot<G::State>) -> i64 {
    crate::shared::enter();
    match G::save(state) {
        Some(bytes) => hand_out(bytes),
        None => -1,
    }
}

/// 0 if the component took over the saved state; else the (ptr, len) of why not.
pub fn upgrade<G: Guest>(
    state: &'static Slot<G::State>,
    from_version: i32,
    ptr: i32,
    len: i32,
) -> i64 {
    crate::shared::enter();
    let saved = take(ptr, len);
    if exec::tasks() > 0 {
        // Futures borrow the value being replaced.
        return hand_out(format!("{} tasks are still in flight", exec::tasks()).into_bytes());
    }
    match G::upgrade(from_version as u32, &saved) {
        Ok(c) => {
            // SAFETY: no task is alive, so nothing borrows the value.
            unsafe { state.set(c) };
            0
        }
        Err(e) if e.is_empty() => hand_out(b"upgrade failed".to_vec()),
        Err(e) => hand_out(e.into_bytes()),
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) mod host {
    #[link(wasm_import_module = "continuum")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn log_(level: i32, ptr: *const u8, len: usize);
        #[link_name = "now_ms"]
        fn now_ms_() -> i64;
        #[link_name = "respond"]
        fn respond_(task: i32, ptr: *const u8, len: usize);
        #[link_name = "call"]
        fn call_(
            task: i32,
            name: *const u8,
            name_len: usize,
            req: *const u8,
            req_len: usize,
        ) -> i64;
        #[link_name = "sleep"]
        fn sleep_(task: i32, ms: i32) -> i64;
        #[link_name = "cancel"]
        fn cancel_(op: i64);
        #[link_name = "tick_done"]
        fn tick_done_(next: i32);
    }

    // SAFETY (all): the host reads the given ranges during the call only, and the slices
    // outlive it.
    pub fn log(msg: &str) {
        unsafe { log_(2, msg.as_ptr(), msg.len()) }
    }
    pub fn now_ms() -> u64 {
        unsafe { now_ms_() as u64 }
    }
    pub fn respond(task: u32, resp: &[u8]) {
        unsafe { respond_(task as i32, resp.as_ptr(), resp.len()) }
    }
    pub fn call(task: u32, name: &str, req: &[u8]) -> u64 {
        unsafe {
            call_(
                task as i32,
                name.as_ptr(),
                name.len(),
                req.as_ptr(),
                req.len(),
            ) as u64
        }
    }
    pub fn sleep(task: u32, ms: u32) -> u64 {
        unsafe { sleep_(task as i32, ms.min(i32::MAX as u32) as i32) as u64 }
    }
    pub fn cancel(op: u64) {
        unsafe { cancel_(op as i64) }
    }
    pub fn tick_done(next: i32) {
        unsafe { tick_done_(next) }
    }
}

// Off Wasm (unit tests of a component on the build machine) the clock and the log come from
// std; calls between components need the host.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod host {
    pub fn log(msg: &str) {
        eprintln!("{msg}");
    }
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    pub fn respond(_: u32, _: &[u8]) {}
    pub fn call(_: u32, name: &str, _: &[u8]) -> u64 {
        panic!("calling {name}: calls between components need the continuum host (wasm32)")
    }
    pub fn sleep(_: u32, _: u32) -> u64 {
        panic!("sleep needs the continuum host (wasm32)")
    }
    pub fn cancel(_: u64) {}
    pub fn tick_done(_: i32) {}
}

pub fn now_ms() -> u64 {
    host::now_ms()
}

pub fn log(msg: &str) {
    host::log(msg)
}
