//! The event queue every scenario runs on: events come out in order of time, then of
//! scheduling, so equal times never depend on a hash order or a thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

struct Scheduled<E> {
    at_us: u64,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(o.at_us, o.seq))
    }
}

pub struct Queue<E> {
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
    seq: u64,
    now_us: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            heap: BinaryHeap::new(),
            seq: 0,
            now_us: 0,
        }
    }
}

impl<E> Queue<E> {
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    pub fn at(&mut self, at_us: u64, ev: E) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at_us: at_us.max(self.now_us),
            seq: self.seq,
            ev,
        }));
    }

    pub fn after(&mut self, delay_us: u64, ev: E) {
        self.at(self.now_us + delay_us, ev);
    }

    /// The next event due by `until_us`, with the clock moved to it; `None` (and the clock at
    /// `until_us`) once there is none.
    pub fn next(&mut self, until_us: u64) -> Option<E> {
        match self.heap.peek() {
            Some(Reverse(s)) if s.at_us <= until_us => {
                let Reverse(s) = self.heap.pop().expect("peeked");
                self.now_us = s.at_us;
                Some(s.ev)
            }
            _ => {
                self.now_us = self.now_us.max(until_us);
                None
            }
        }
    }
}
