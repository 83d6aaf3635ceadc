//! Reading a linear memory while its component runs, from another thread: the first round of a
//! migration without copying the memory on the component's thread first.
//!
//! Why it is sound: write tracking starts before the first byte is read, and every page the
//! component writes from then on is reported written and sent again in a later round (or, where
//! the kernel does not track writes, its digest differs from the one sent and it is sent
//! again). So a page read while the component was writing it, torn between two states, never
//! ends up at the target: a later round replaces it, and the last one is taken while the
//! component is frozen. The digest sent with a page is computed from the very copy sent, so the
//! target's check holds for it. The reads are word-sized atomic loads: the component's writes
//! happen outside the Rust program, as in memory shared with another process.

use crate::hash::{Digest, PAGE_SIZE, ZERO_PAGE_DIGEST};
use crate::snapshot::MemoryImage;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A linear memory readable from any thread while its component runs.
#[derive(Clone, Copy, Debug)]
pub struct LiveMemory {
    base: usize,
    len: usize,
}

impl LiveMemory {
    /// # Safety
    /// `[base, base + len)` must stay mapped and readable, at that address, for as long as
    /// this value or a copy of it is used; `base` must be page-aligned and `len` a multiple of
    /// the page size.
    pub unsafe fn new(base: *const u8, len: usize) -> LiveMemory {
        debug_assert!((base as usize).is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE));
        LiveMemory {
            base: base as usize,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `dst.len()` bytes from `offset` into `dst` (both multiples of 8, within the
    /// memory).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset.is_multiple_of(8)
                && dst.len().is_multiple_of(8)
                && offset + dst.len() <= self.len,
            "a read of {} bytes at {offset} of a {}-byte memory",
            dst.len(),
            self.len
        );
        let from = (self.base + offset) as *mut u64;
        for (k, word) in dst.chunks_exact_mut(8).enumerate() {
            // SAFETY: the word lies inside the region, which the constructor's caller keeps
            // mapped, and is aligned (the base is page-aligned, the offset a multiple of 8).
            // The load is atomic, so the component's concurrent writes (outside this program)
            // make it no data race.
            let w = unsafe { AtomicU64::from_ptr(from.add(k)) }.load(Ordering::Relaxed);
            word.copy_from_slice(&w.to_ne_bytes());
        }
    }
}

/// The first round of a migration read from running memories, a part at a time (as
/// [`crate::split_round`] would cut [`MemoryImage::changed_since`] with no base): the pages that
/// are not zero, with their digests, and the digest of every page. Part by part so that the
/// source holds a part, not a copy of the whole state, and sends each as soon as it is read.
#[derive(Debug)]
pub struct FirstRound {
    memories: Vec<LiveMemory>,
    /// Where the reading is: memory, page.
    memory: usize,
    page: usize,
    maps: Vec<Vec<Digest>>,
}

impl FirstRound {
    pub fn new(memories: Vec<LiveMemory>) -> FirstRound {
        let maps = memories
            .iter()
            .map(|m| Vec::with_capacity(m.len() / PAGE_SIZE))
            .collect();
        FirstRound {
            memories,
            memory: 0,
            page: 0,
            maps,
        }
    }

    /// The next part: at most `max_pages` pages, every memory named with its size; `None`
    /// once every page was read, or if `stop` was set (the component is going away).
    pub fn next_part(&mut self, max_pages: usize, stop: &AtomicBool) -> Option<Vec<MemoryImage>> {
        let max_pages = max_pages.max(1);
        if self.memory >= self.memories.len() || stop.load(Ordering::Relaxed) {
            return None;
        }
        let mut part: Vec<MemoryImage> = self
            .memories
            .iter()
            .map(|m| MemoryImage {
                size: m.len() as u64,
                present: Vec::new(),
                digests: Vec::new(),
                data: Default::default(),
            })
            .collect();
        let mut data = Vec::with_capacity(max_pages.min(self.pages_left()) * PAGE_SIZE);
        let mut bytes = [0u8; PAGE_SIZE];
        let mut taken = 0;
        while let Some(m) = self.memories.get(self.memory) {
            let (image, map) = (&mut part[self.memory], &mut self.maps[self.memory]);
            while taken < max_pages && self.page < m.len() / PAGE_SIZE {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                m.read(self.page * PAGE_SIZE, &mut bytes);
                if crate::snapshot::is_zero(&bytes) {
                    map.push(*ZERO_PAGE_DIGEST);
                } else {
                    let d = *blake3::hash(&bytes).as_bytes();
                    map.push(d);
                    image.digests.extend_from_slice(&d);
                    image.present.push(self.page as u32);
                    data.extend_from_slice(&bytes);
                    taken += 1;
                }
                self.page += 1;
            }
            image.data = std::mem::take(&mut data).into();
            if self.page == m.len() / PAGE_SIZE {
                self.memory += 1;
                self.page = 0;
            }
            if taken == max_pages {
                break;
            }
        }
        Some(part)
    }

    fn pages_left(&self) -> usize {
        self.memories[self.memory..]
            .iter()
            .map(|m| m.len() / PAGE_SIZE)
            .sum::<usize>()
            - self.page
    }

    /// Whether every page was read.
    pub fn is_done(&self) -> bool {
        self.memory >= self.memories.len()
    }

    /// The digest of every page of every memory, once [`Self::is_done`].
    pub fn into_maps(self) -> Vec<Vec<Digest>> {
        self.maps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_round_read_live_is_the_one_taken_from_a_copy_in_the_same_parts() {
        let mut mem = vec![0u8; 64 * PAGE_SIZE + PAGE_SIZE];
        let start = mem.as_ptr().align_offset(PAGE_SIZE);
        let mem = &mut mem[start..start + 64 * PAGE_SIZE];
        for (i, b) in mem.iter_mut().enumerate().step_by(5000) {
            *b = (i % 251) as u8 + 1;
        }
        let (a, b) = mem.split_at(16 * PAGE_SIZE);
        // SAFETY: `mem` outlives the reader, and nothing else writes it meanwhile.
        let live = unsafe {
            [
                LiveMemory::new(a.as_ptr(), a.len()),
                LiveMemory::new(b.as_ptr(), b.len()),
            ]
        };
        let mut reader = FirstRound::new(live.to_vec());
        let mut parts = Vec::new();
        while let Some(part) = reader.next_part(7, &AtomicBool::new(false)) {
            parts.push(part);
        }
        assert!(reader.is_done());
        let (want_a, map_a) = MemoryImage::changed_since(a, &[]);
        let (want_b, map_b) = MemoryImage::changed_since(b, &[]);
        assert_eq!(parts, crate::split_round(&[want_a, want_b], 7));
        assert_eq!(reader.into_maps(), vec![map_a, map_b]);
        let mut stopped = FirstRound::new(live.to_vec());
        assert!(stopped.next_part(7, &AtomicBool::new(true)).is_none());
    }
}
