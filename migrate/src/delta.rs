//! Page deltas: the pages whose digest changed since a base snapshot. Pre-copy rounds send these
//! while the source keeps serving; applying one must give exactly the snapshot the sender had.

use crate::hash::{Digest, PAGE_SIZE, ZERO_PAGE_DIGEST, first_bad_page, page_digests};
use crate::snapshot::{
    FORMAT_VERSION, MemoryImage, Snapshot, SnapshotError, Value, attach_data, decode_framed,
    encode_framed,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The changed pages of one memory, in the shape of a [`MemoryImage`] whose page list names the
/// pages that changed (zero pages included) rather than the pages that are not zero.
pub type MemoryDelta = MemoryImage;

/// Pages of one memory written since some point, copied out: `data` holds `pages.len()` pages
/// in the order of `pages`.
#[derive(Clone, Debug, Default)]
pub struct WrittenPages {
    /// The memory's length in bytes.
    pub size: usize,
    pub pages: Vec<u32>,
    pub data: Vec<u8>,
}

/// What turns the snapshot `base` into the snapshot `result`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub format: u32,
    /// Digest of the snapshot this delta applies to.
    #[serde(with = "serde_bytes")]
    pub base: Digest,
    pub memories: Vec<MemoryDelta>,
    /// Every mutable global (a handful of words: cheaper whole than diffed).
    pub globals: Vec<Value>,
    /// Digest of the snapshot that applying this delta must give.
    #[serde(with = "serde_bytes")]
    pub result: Digest,
}

impl MemoryImage {
    /// The pages of `mem` whose digest differs from `base` (the digest map of the previous
    /// state; pages past its end count as zero before). Returns the delta and the new digest map.
    pub fn changed_since(mem: &[u8], base: &[Digest]) -> (MemoryDelta, Vec<Digest>) {
        let now = page_digests(mem);
        let changed = (0..now.len() as u32)
            .filter(|&i| base.get(i as usize).unwrap_or(&ZERO_PAGE_DIGEST) != &now[i as usize])
            .collect();
        (MemoryImage::select(mem, &now, changed), now)
    }

    /// Like [`Self::changed_since`], but only the `candidates` (pages written since `base`
    /// was taken, as the kernel reported them) are hashed; the others are known unchanged.
    pub fn changed_among(
        mem: &[u8],
        base: &[Digest],
        candidates: Vec<u32>,
    ) -> (MemoryDelta, Vec<Digest>) {
        use rayon::prelude::*;
        let pages = mem.len() / PAGE_SIZE;
        let mut map = base.to_vec();
        map.resize(pages, *ZERO_PAGE_DIGEST);
        let hashed: Vec<(u32, Digest)> = candidates
            .par_iter()
            .with_min_len(64)
            .filter(|&&i| (i as usize) < pages)
            .map(|&i| {
                let page = &mem[i as usize * PAGE_SIZE..][..PAGE_SIZE];
                (i, *blake3::hash(page).as_bytes())
            })
            .collect();
        let mut changed = Vec::with_capacity(hashed.len());
        for (i, d) in hashed {
            if map[i as usize] != d {
                map[i as usize] = d;
                changed.push(i);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        (MemoryImage::select(mem, &map, changed), map)
    }

    /// Like [`Self::changed_among`], from copies of the written pages taken earlier: the
    /// hashing runs wherever the caller likes, not where the memory is.
    pub fn changed_among_copies(base: &[Digest], w: &WrittenPages) -> (MemoryDelta, Vec<Digest>) {
        use rayon::prelude::*;
        let pages = w.size / PAGE_SIZE;
        let mut map = base.to_vec();
        map.resize(pages, *ZERO_PAGE_DIGEST);
        let hashed: Vec<Digest> = w
            .data
            .par_chunks_exact(PAGE_SIZE)
            .with_min_len(64)
            .map(|p| *blake3::hash(p).as_bytes())
            .collect();
        let mut changed: Vec<(u32, usize)> = Vec::with_capacity(hashed.len());
        for (k, (&i, d)) in w.pages.iter().zip(&hashed).enumerate() {
            if (i as usize) < pages && map[i as usize] != *d {
                map[i as usize] = *d;
                changed.push((i, k));
            }
        }
        changed.sort_unstable();
        changed.dedup_by_key(|c| c.0);
        let mut data = Vec::with_capacity(changed.len() * PAGE_SIZE);
        let mut digests = Vec::with_capacity(changed.len() * 32);
        for &(i, k) in &changed {
            data.extend_from_slice(&w.data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
            digests.extend_from_slice(&map[i as usize]);
        }
        let image = MemoryImage {
            size: w.size as u64,
            present: changed.iter().map(|c| c.0).collect(),
            digests,
            data: data.into(),
        };
        (image, map)
    }

    /// Write only the listed pages into `mem` (which must be `size` bytes long already).
    pub fn write_pages_into(&self, mem: &mut [u8]) {
        self.write_into(mem, 0);
    }
}

/// Split a round (one delta per memory) into parts of at most `max_pages` pages each, in
/// order; every part names every memory with its size, so each decodes and applies on its own.
/// The page data is shared, not copied. At least one part, maybe empty.
pub fn split_round(round: &[MemoryDelta], max_pages: usize) -> Vec<Vec<MemoryDelta>> {
    let max_pages = max_pages.max(1);
    let empty = |m: &MemoryDelta| MemoryDelta {
        size: m.size,
        present: Vec::new(),
        digests: Vec::new(),
        data: Bytes::new(),
    };
    let mut parts = vec![round.iter().map(empty).collect::<Vec<_>>()];
    let mut room = max_pages;
    for (i, m) in round.iter().enumerate() {
        let mut k = 0;
        while k < m.present.len() {
            if room == 0 {
                parts.push(round.iter().map(empty).collect());
                room = max_pages;
            }
            let n = room.min(m.present.len() - k);
            let part = &mut parts.last_mut().expect("never empty")[i];
            part.present = m.present[k..k + n].to_vec();
            part.digests = m.digests[k * 32..(k + n) * 32].to_vec();
            part.data = m.data.slice(k * PAGE_SIZE..(k + n) * PAGE_SIZE);
            k += n;
            room -= n;
        }
    }
    parts
}

/// Encode the pages of a pre-copy round (one image per memory) for the wire.
pub fn encode_pages(memories: &[MemoryDelta]) -> Vec<u8> {
    encode_framed(&memories, memories, 0)
}

/// Decode a round's pages, checking every page against its digest.
pub fn decode_pages(bytes: impl Into<Bytes>) -> Result<Vec<MemoryDelta>, SnapshotError> {
    let (mut memories, data): (Vec<MemoryDelta>, Bytes) = decode_framed(bytes.into())?;
    attach_data(&mut memories, data)?;
    for (memory, m) in memories.iter().enumerate() {
        if m.digests.len() != m.present.len() * 32 || m.present.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SnapshotError::Inconsistent(format!(
                "round memory {memory}: page list and digests disagree"
            )));
        }
        if m.present.last().is_some_and(|&p| p as usize >= m.pages()) || m.size % 65536 != 0 {
            return Err(SnapshotError::Inconsistent(format!(
                "round memory {memory}: a page lies past the end of the memory"
            )));
        }
        if let Some(k) = first_bad_page(&m.data, &m.digests) {
            return Err(SnapshotError::BadPage {
                memory,
                page: m.present[k],
            });
        }
    }
    Ok(memories)
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn a_round_split_into_parts_applies_to_the_same_memory() {
        let mut mem = vec![0u8; 4 * 65536];
        for (i, b) in mem.iter_mut().enumerate().step_by(1000) {
            *b = (i % 251) as u8 + 1;
        }
        let (round, _) = MemoryImage::changed_since(&mem, &[]);
        let other = MemoryImage::changed_since(&[0u8; 65536], &[]).0;
        let round = vec![round, other];
        let parts = split_round(&round, 7);
        assert!(parts.len() > 2);
        assert!(
            parts
                .iter()
                .all(|p| p.len() == 2 && p.iter().map(|m| m.present.len()).sum::<usize>() <= 7)
        );
        let mut whole = vec![0xAAu8; mem.len()];
        let mut pieces = vec![0xAAu8; mem.len()];
        round[0].write_pages_into(&mut whole);
        for p in &parts {
            let decoded = decode_pages(encode_pages(p)).unwrap();
            decoded[0].write_pages_into(&mut pieces);
        }
        assert_eq!(whole, pieces);
        assert_eq!(split_round(&[], 7), vec![Vec::<MemoryDelta>::new()]);
    }
}

impl Delta {
    /// The delta from `base` to `next` (two snapshots of the same component).
    pub fn between(base: &Snapshot, next: &Snapshot) -> Result<Delta, SnapshotError> {
        same_shape(base.memories.len(), next.memories.len())?;
        let memories = base
            .memories
            .iter()
            .zip(&next.memories)
            .map(|(b, n)| {
                let (bm, nm) = (b.digest_map(), n.digest_map());
                let changed: Vec<u32> = (0..nm.len() as u32)
                    .filter(|&i| bm.get(i as usize).unwrap_or(&ZERO_PAGE_DIGEST) != &nm[i as usize])
                    .collect();
                let mut data = Vec::with_capacity(changed.len() * PAGE_SIZE);
                let mut digests = Vec::with_capacity(changed.len() * 32);
                let slots = n.slot_map();
                for &i in &changed {
                    digests.extend_from_slice(&nm[i as usize]);
                    match slots[i as usize] {
                        u32::MAX => data.resize(data.len() + PAGE_SIZE, 0),
                        k => data.extend_from_slice(&n.data[k as usize * PAGE_SIZE..][..PAGE_SIZE]),
                    }
                }
                MemoryDelta {
                    size: n.size,
                    present: changed,
                    digests,
                    data: data.into(),
                }
            })
            .collect();
        Ok(Delta {
            format: FORMAT_VERSION,
            base: base.digest,
            memories,
            globals: next.globals.clone(),
            result: next.digest,
        })
    }

    /// Bytes of page data the delta carries.
    pub fn page_bytes(&self) -> u64 {
        self.memories.iter().map(|m| m.data.len() as u64).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_framed(self, &self.memories, 0)
    }

    /// Decode and check the structure and every page digest; [`Snapshot::apply`] checks the
    /// result against `result`.
    pub fn decode(bytes: impl Into<Bytes>) -> Result<Delta, SnapshotError> {
        let (mut d, data): (Delta, Bytes) = decode_framed(bytes.into())?;
        attach_data(&mut d.memories, data)?;
        if d.format != FORMAT_VERSION {
            return Err(SnapshotError::Format(d.format));
        }
        for (memory, m) in d.memories.iter().enumerate() {
            if m.digests.len() != m.present.len() * 32
                || m.data.len() != m.present.len() * PAGE_SIZE
            {
                return Err(SnapshotError::Inconsistent(format!(
                    "delta memory {memory}: page list, digests and data disagree in length"
                )));
            }
            if let Some(k) = first_bad_page(&m.data, &m.digests) {
                return Err(SnapshotError::BadPage {
                    memory,
                    page: m.present[k],
                });
            }
        }
        Ok(d)
    }
}

impl Snapshot {
    /// Apply a delta taken against this snapshot; the result is checked against the digest the
    /// sender computed.
    pub fn apply(&self, delta: &Delta) -> Result<Snapshot, SnapshotError> {
        if delta.base != self.digest {
            return Err(SnapshotError::Inconsistent(format!(
                "delta applies to snapshot {}, not to {}",
                crate::digest_hex(&delta.base),
                crate::digest_hex(&self.digest)
            )));
        }
        same_shape(self.memories.len(), delta.memories.len())?;
        let mut memories = Vec::with_capacity(self.memories.len());
        for (b, d) in self.memories.iter().zip(&delta.memories) {
            if d.size < b.size
                || d.present
                    .iter()
                    .any(|&i| i as u64 >= d.size / PAGE_SIZE as u64)
            {
                return Err(SnapshotError::Inconsistent(
                    "delta shrinks a memory or writes past its end".into(),
                ));
            }
            // Rebuild the memory as bytes and re-select its non-zero pages: simple, and the
            // same code path as a capture, so the result digest means the same thing.
            let mut mem = vec![0u8; d.size as usize];
            b.write_into(&mut mem[..b.size as usize], 0);
            d.write_pages_into(&mut mem);
            let mut all = b.digest_map();
            all.resize(d.pages(), *ZERO_PAGE_DIGEST);
            for (k, &i) in d.present.iter().enumerate() {
                all[i as usize].copy_from_slice(&d.digests[k * 32..k * 32 + 32]);
            }
            let present = (0..all.len() as u32)
                .filter(|&i| all[i as usize] != *ZERO_PAGE_DIGEST)
                .collect();
            memories.push(MemoryImage::select(&mem, &all, present));
        }
        let out = Snapshot::new(
            self.meta.clone(),
            self.module_digest,
            memories,
            delta.globals.clone(),
        );
        if out.digest != delta.result {
            return Err(SnapshotError::BadDigest);
        }
        Ok(out)
    }
}

fn same_shape(a: usize, b: usize) -> Result<(), SnapshotError> {
    if a != b {
        return Err(SnapshotError::Inconsistent(format!(
            "{a} memories on one side, {b} on the other"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ComponentMeta;
    use proptest::prelude::*;

    fn snap(mem: &[u8], g: i32) -> Snapshot {
        let meta = ComponentMeta {
            name: "p".into(),
            version: "1".into(),
            abi: 1,
            epoch: 1,
            ..Default::default()
        };
        Snapshot::new(
            meta,
            [1; 32],
            vec![MemoryImage::capture(mem)],
            vec![Value::I32(g)],
        )
    }

    proptest! {
        /// Any sequence of writes and growth: base + delta == the next snapshot, byte for byte,
        /// and the delta carries exactly the pages that changed.
        #[test]
        fn delta_roundtrip(
            writes in prop::collection::vec((0usize..3 * 65536, any::<u8>()), 0..40),
            grow in 0usize..2,
        ) {
            let mut mem = vec![0u8; 2 * 65536];
            for (i, &(at, v)) in writes.iter().enumerate().take(writes.len() / 2) {
                let at = at % mem.len();
                mem[at] = v ^ i as u8;
            }
            let base = snap(&mem, 1);
            mem.resize(mem.len() + grow * 65536, 0);
            let mut touched = std::collections::BTreeSet::new();
            for &(at, v) in &writes[writes.len() / 2..] {
                let at = at % mem.len();
                if mem[at] != v { touched.insert((at / PAGE_SIZE) as u32); }
                mem[at] = v;
            }
            let next = snap(&mem, 2);
            let delta = Delta::between(&base, &next).unwrap();
            let decoded = Delta::decode(delta.encode()).unwrap();
            prop_assert_eq!(&decoded, &delta);
            let got = base.apply(&decoded).unwrap();
            prop_assert_eq!(&got, &next);
            let (live, map) = MemoryImage::changed_since(&mem, &base.memories[0].digest_map());
            prop_assert_eq!(map, next.memories[0].digest_map());
            prop_assert_eq!(&live.present, &delta.memories[0].present);
            prop_assert!(live.present.iter().all(|p| touched.contains(p)));
        }
    }

    #[test]
    fn round_pages_roundtrip_and_refuse_tampering() {
        let mut mem = vec![0u8; 2 * 65536];
        mem[100] = 1;
        mem[9000] = 2;
        let (round, _) = MemoryImage::changed_since(&mem, &[]);
        let bytes = encode_pages(std::slice::from_ref(&round));
        assert_eq!(decode_pages(bytes.clone()).unwrap(), vec![round]);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            decode_pages(bad),
            Err(SnapshotError::BadPage { .. })
        ));
        assert!(decode_pages(bytes[..bytes.len() - 5].to_vec()).is_err());
    }

    #[test]
    fn delta_on_the_wrong_base_is_refused() {
        let a = snap(&[0u8; 65536], 1);
        let mut m = vec![0u8; 65536];
        m[1] = 1;
        let b = snap(&m, 1);
        let d = Delta::between(&a, &b).unwrap();
        assert!(b.apply(&d).is_err());
        let mut tampered = d.clone();
        tampered.globals = vec![Value::I32(99)];
        assert!(matches!(a.apply(&tampered), Err(SnapshotError::BadDigest)));
    }
}
