//! [`Shared`]: mutable state for an [`AsyncComponent`](crate::AsyncComponent), whose requests
//! all hold `&self` at once.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the host's entries into the guest, so that a borrow left behind by a call the host
/// cut short (a trap inside `with`) is recognised as stale instead of poisoning the value.
static ENTRY: AtomicU64 = AtomicU64::new(1);

pub(crate) fn enter() {
    ENTRY.fetch_add(1, Ordering::Relaxed);
}

/// A value that every request of a component may change, one at a time: `with` lends it out
/// for a closure (which cannot await, so no other request runs meanwhile).
///
/// Like a `RefCell` without its failure mode here: a `RefCell` borrowed when the guest traps
/// (a panic, the memory cap) stays borrowed, and every later request panics on it. `Shared`
/// only refuses a nested `with` on the same value within one entry.
#[derive(Default)]
pub struct Shared<T> {
    value: UnsafeCell<T>,
    lent_in: Cell<u64>,
}

impl<T> Shared<T> {
    pub const fn new(value: T) -> Self {
        Shared {
            value: UnsafeCell::new(value),
            lent_in: Cell::new(0),
        }
    }

    /// Run `f` with the value. Panics if called inside another `with` of the same value.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let entry = ENTRY.load(Ordering::Relaxed);
        assert_ne!(
            self.lent_in.get(),
            entry,
            "Shared::with called inside another with of the same value"
        );
        self.lent_in.set(entry);
        // SAFETY: `lent_in` proves no other `with` of this value is running in this entry, and
        // one from an earlier entry ended when that entry did (the guest is single-threaded and
        // `f` cannot outlive its call).
        let r = f(unsafe { &mut *self.value.get() });
        self.lent_in.set(0);
        r
    }

    /// A copy of the value.
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.with(|v| v.clone())
    }
}
