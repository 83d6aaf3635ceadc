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

    /// Every page that is not zero, with its digest, and the digest of every page: the first
    /// round of a migration (as [`MemoryImage::changed_since`] with no base), read while the
    /// component runs. `None` if `stop` was set meanwhile (the component is going away).
    pub fn first_round(&self, stop: &AtomicBool) -> Option<(MemoryImage, Vec<Digest>)> {
        let pages = self.len / PAGE_SIZE;
        let mut map = Vec::with_capacity(pages);
        let mut present = Vec::new();
        let mut digests = Vec::new();
        let mut data: Vec<u8> = Vec::with_capacity(self.len);
        crate::prefault::advise(data.spare_capacity_mut());
        let mut bytes = [0u8; PAGE_SIZE];
        for i in 0..pages {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            self.read(i * PAGE_SIZE, &mut bytes);
            if crate::snapshot::is_zero(&bytes) {
                map.push(*ZERO_PAGE_DIGEST);
                continue;
            }
            let d = *blake3::hash(&bytes).as_bytes();
            map.push(d);
            digests.extend_from_slice(&d);
            present.push(i as u32);
            data.extend_from_slice(&bytes);
        }
        let image = MemoryImage {
            size: self.len as u64,
            present,
            digests,
            data: data.into(),
        };
        Some((image, map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_round_read_live_is_the_one_taken_from_a_copy() {
        let mut mem = vec![0u8; 64 * PAGE_SIZE + PAGE_SIZE];
        let start = mem.as_ptr().align_offset(PAGE_SIZE);
        let mem = &mut mem[start..start + 64 * PAGE_SIZE];
        for (i, b) in mem.iter_mut().enumerate().step_by(5000) {
            *b = (i % 251) as u8 + 1;
        }
        // SAFETY: `mem` outlives `live`, and nothing else writes it meanwhile.
        let live = unsafe { LiveMemory::new(mem.as_ptr(), mem.len()) };
        let (image, map) = live.first_round(&AtomicBool::new(false)).unwrap();
        let (want, want_map) = MemoryImage::changed_since(mem, &[]);
        assert_eq!((image, map), (want, want_map));
        assert!(live.first_round(&AtomicBool::new(true)).is_none());
    }
}
