//! The HTTP/1.1 connections this node holds, capped below its file-descriptor limit. At the cap
//! the connection idle longest (no request in flight) is closed to make room; only when every
//! connection is busy is the newcomer refused. Why: each TCP connection costs a descriptor, and
//! idle sockets opened by anyone would otherwise lock every client out and make checkpoints
//! (which open files) fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

pub struct Conns {
    cap: usize,
    /// When the registry began: idle times are kept as microseconds since.
    epoch: Instant,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, Entry>,
}

/// What a connection's requests update without taking the registry's lock.
#[derive(Default)]
struct State {
    busy: AtomicU32,
    idle_since_us: AtomicU64,
}

struct Entry {
    state: Arc<State>,
    close: Arc<Notify>,
}

/// One admitted connection; dropping it frees its place.
pub struct Conn {
    id: u64,
    conns: Arc<Conns>,
    state: Arc<State>,
    /// Notified when the connection must close (it was idle longest at the cap).
    pub close: Arc<Notify>,
}

/// A request in flight on a connection: it is not idle meanwhile.
pub struct Busy {
    state: Arc<State>,
    epoch: Instant,
}

/// What `admit` did to make room.
pub enum Admitted {
    Room(Conn),
    /// The idle connection closed for it.
    Evicted(Conn),
    /// At the cap with every connection busy.
    Full,
}

impl Conns {
    pub fn new(cap: usize) -> Arc<Conns> {
        Arc::new(Conns {
            cap: cap.max(1),
            epoch: Instant::now(),
            open: Mutex::default(),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap().conns.len()
    }

    pub fn admit(self: &Arc<Self>) -> Admitted {
        let mut open = self.open.lock().unwrap();
        let mut evicted = false;
        if open.conns.len() >= self.cap {
            let idlest = open
                .conns
                .iter()
                .filter(|(_, e)| e.state.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, e)| e.state.idle_since_us.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(id) = idlest else {
                return Admitted::Full;
            };
            let e = open.conns.remove(&id).expect("found above");
            e.close.notify_one();
            evicted = true;
        }
        open.next += 1;
        let id = open.next;
        let close = Arc::new(Notify::new());
        let state = Arc::new(State::default());
        state
            .idle_since_us
            .store(micros_since(self.epoch), Ordering::Relaxed);
        open.conns.insert(
            id,
            Entry {
                state: state.clone(),
                close: close.clone(),
            },
        );
        let conn = Conn {
            id,
            conns: self.clone(),
            state,
            close,
        };
        if evicted {
            Admitted::Evicted(conn)
        } else {
            Admitted::Room(conn)
        }
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

impl Conn {
    pub fn busy(&self) -> Busy {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            state: self.state.clone(),
            epoch: self.conns.epoch,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state
            .idle_since_us
            .store(micros_since(self.epoch), Ordering::Relaxed);
        self.state.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.conns.open.lock().unwrap().conns.remove(&self.id);
    }
}

/// The most connections worth holding under this process's descriptor limit: three quarters of
/// it, less what the node needs besides (files, sockets of the mesh).
pub fn fd_budget() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass, of the declared layout.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            let soft = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
            return (soft - soft / 4).saturating_sub(64).max(16);
        }
    }
    1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_idlest_connection_makes_room_and_busy_ones_never_do() {
        let conns = Conns::new(2);
        let Admitted::Room(a) = conns.admit() else {
            panic!()
        };
        let Admitted::Room(b) = conns.admit() else {
            panic!()
        };
        let _a_busy = a.busy();
        // b is idle: it goes.
        let Admitted::Evicted(c) = conns.admit() else {
            panic!()
        };
        assert_eq!(conns.len(), 2);
        drop(b); // its task ends after the notice; its place was already taken
        assert_eq!(conns.len(), 2);
        let _c_busy = c.busy();
        assert!(matches!(conns.admit(), Admitted::Full));
        drop(_a_busy);
        assert!(matches!(conns.admit(), Admitted::Evicted(_)));
    }
}
