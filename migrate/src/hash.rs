//! Page digests: the unit of integrity checks and of deltas.

use rayon::prelude::*;
use std::sync::LazyLock;

/// A blake3 digest.
pub type Digest = [u8; 32];

/// Snapshot page size. The OS page size rather than Wasm's 64 KiB page, so that a delta carries
/// little more than what a guest actually wrote, and so that kernel dirty-page tracking maps
/// one-to-one onto snapshot pages.
pub const PAGE_SIZE: usize = 4096;

/// Digest of an all-zero page. A page with this digest is zero, so snapshots leave it out.
pub static ZERO_PAGE_DIGEST: LazyLock<Digest> =
    LazyLock::new(|| *blake3::hash(&[0u8; PAGE_SIZE]).as_bytes());

/// Below this many pages, spreading the hashing over threads costs more than it saves.
const PARALLEL_PAGES: usize = 64;

/// Digest of every page of `mem` (whose length is a multiple of [`PAGE_SIZE`]), in parallel.
pub fn page_digests(mem: &[u8]) -> Vec<Digest> {
    debug_assert_eq!(mem.len() % PAGE_SIZE, 0);
    let one = |page: &[u8]| *blake3::hash(page).as_bytes();
    if mem.len() / PAGE_SIZE < PARALLEL_PAGES {
        mem.chunks_exact(PAGE_SIZE).map(one).collect()
    } else {
        mem.par_chunks_exact(PAGE_SIZE).map(one).collect()
    }
}

/// Check every page of `data` against its digest in `digests`; returns the position of the
/// first page that does not match.
pub(crate) fn first_bad_page(data: &[u8], digests: &[u8]) -> Option<usize> {
    let check = |(i, (page, want)): (usize, (&[u8], &[u8]))| {
        (blake3::hash(page).as_bytes() != want).then_some(i)
    };
    if data.len() / PAGE_SIZE < PARALLEL_PAGES {
        let pages = data.chunks_exact(PAGE_SIZE).zip(digests.chunks_exact(32));
        pages.enumerate().find_map(check)
    } else {
        let pages = data
            .par_chunks_exact(PAGE_SIZE)
            .zip(digests.par_chunks_exact(32));
        pages.enumerate().find_map_first(check)
    }
}

/// Lower-case hex of a digest, as users see it.
pub fn digest_hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds framed fields into a blake3 hasher, so that the whole-snapshot digest covers every
/// field without re-hashing page data (the page digests already cover it).
pub(crate) struct Framer(blake3::Hasher);

impl Framer {
    pub(crate) fn new(domain: &str) -> Self {
        let mut f = Framer(blake3::Hasher::new());
        f.bytes(domain.as_bytes());
        f
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.update(b);
        self
    }
    pub(crate) fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.u64(v.len() as u64);
        for x in v {
            self.0.update(&x.to_le_bytes());
        }
        self
    }
    pub(crate) fn finish(&self) -> Digest {
        *self.0.finalize().as_bytes()
    }
}
