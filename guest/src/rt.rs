//! What `export!` expands to call: the guest half of the ABI. Not a public API.

use crate::{Component, Response, abi};
use std::cell::UnsafeCell;

/// Holds the component value. Not a `RefCell`: if the host cuts a call short (deadline, trap),
/// a borrow flag would stay set and poison every later call; the host serialises calls, so
/// there is never a second borrower.
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
    fn get(&self) -> &mut T {
        // SAFETY: see the `Sync` impl; calls never nest, so this is the only live reference.
        unsafe { (*self.0.get()).get_or_insert_with(T::default) }
    }
}

/// The last response, kept until the next call so the host can copy it out.
static RESPONSE: Slot<Vec<u8>> = Slot::new();

pub fn alloc(len: i32) -> i32 {
    let mut buf = Vec::<u8>::with_capacity(len.max(0) as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

pub fn handle<C: Component>(state: &Slot<C>, ptr: i32, len: i32) -> i64 {
    // SAFETY: the host wrote `len` bytes into the buffer that `alloc(len)` returned.
    let bytes = unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, len as usize) };
    let resp = match abi::decode_request(&bytes) {
        Ok(req) => state.get().handle(&req),
        Err(e) => Response::text(400, format!("request did not decode: {e}\n")),
    };
    drop(bytes);
    hand_out(abi::encode_response(&resp))
}

pub fn tick<C: Component>(state: &Slot<C>, now_ms: i64) -> i32 {
    match state.get().tick(now_ms.max(0) as u64) {
        Some(ms) => ms.min(i32::MAX as u32) as i32,
        None => -1,
    }
}

pub fn on_restore<C: Component>(state: &Slot<C>) {
    state.get().on_restore()
}

/// Leave `bytes` where the host can copy them from until the next call; their (ptr, len).
fn hand_out(bytes: Vec<u8>) -> i64 {
    let out = RESPONSE.get();
    *out = bytes;
    ((out.as_ptr() as usize as i64) << 32) | out.len() as i64
}

/// The saved state as (ptr, len), or -1 if the component cannot hand it over.
pub fn save<C: Component>(state: &Slot<C>) -> i64 {
    match state.get().save() {
        Some(bytes) => hand_out(bytes),
        None => -1,
    }
}

/// 0 if the component took over the saved state; else the (ptr, len) of why not.
pub fn upgrade<C: Component>(state: &Slot<C>, from_version: i32, ptr: i32, len: i32) -> i64 {
    // SAFETY: the host wrote `len` bytes into the buffer that `alloc(len)` returned.
    let saved = unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, len as usize) };
    match C::upgrade(from_version as u32, &saved) {
        Ok(c) => {
            // SAFETY: as in `Slot::get`: no other reference is live during a call.
            unsafe { *state.0.get() = Some(c) };
            0
        }
        Err(e) if e.is_empty() => hand_out(b"upgrade failed".to_vec()),
        Err(e) => hand_out(e.into_bytes()),
    }
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "continuum")]
    unsafe extern "C" {
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn now_ms() -> i64;
    }
}

#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> u64 {
    // SAFETY: a plain host call without pointers.
    unsafe { host::now_ms() as u64 }
}

#[cfg(target_arch = "wasm32")]
pub fn log(msg: &str) {
    // SAFETY: the host reads `len` bytes at `ptr`, which `msg` keeps alive for the call.
    unsafe { host::log(2, msg.as_ptr(), msg.len()) }
}

// Off Wasm (unit tests of a component on the build machine) the host's services come from std.
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(msg: &str) {
    eprintln!("{msg}");
}
