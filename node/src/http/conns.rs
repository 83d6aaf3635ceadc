//! The HTTP/1.1 connections this node holds, capped below its file-descriptor limit. At the cap
//! the connection idle longest (no request in flight) is closed to make room; only when every
//! connection is busy is the newcomer refused. Why: each TCP connection costs a descriptor, and
//! idle sockets opened by anyone would otherwise lock every client out and make checkpoints
//! (which open files) fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

pub struct Conns {
    cap: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, Entry>,
}

struct Entry {
    busy: u32,
    idle_since: Instant,
    close: Arc<Notify>,
}

/// One admitted connection; dropping it frees its place.
pub struct Conn {
    id: u64,
    conns: Arc<Conns>,
    /// Notified when the connection must close (it was idle longest at the cap).
    pub close: Arc<Notify>,
}

/// A request in flight on a connection: it is not idle meanwhile.
pub struct Busy(Arc<Conns>, u64);

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
                .filter(|(_, e)| e.busy == 0)
                .min_by_key(|(_, e)| e.idle_since)
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
        open.conns.insert(
            id,
            Entry {
                busy: 0,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        let conn = Conn {
            id,
            conns: self.clone(),
            close,
        };
        if evicted {
            Admitted::Evicted(conn)
        } else {
            Admitted::Room(conn)
        }
    }
}

impl Conn {
    pub fn busy(&self) -> Busy {
        if let Some(e) = self.conns.open.lock().unwrap().conns.get_mut(&self.id) {
            e.busy += 1;
        }
        Busy(self.conns.clone(), self.id)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.0.open.lock().unwrap().conns.get_mut(&self.1) {
            e.busy -= 1;
            e.idle_since = Instant::now();
        }
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
