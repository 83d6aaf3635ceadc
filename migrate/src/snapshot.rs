//! The snapshot format: module digest, memory pages, mutable globals and
//! component metadata, encoded as CBOR, with a blake3 digest per page and one over the whole.
//!
//! On the wire a snapshot is a CBOR array of two items: a header (every field but page data)
//! and one byte string holding the page data of every memory in order. The split lets a
//! receiver verify and use the pages where they lie, instead of copying them through the CBOR
//! decoder: decoding 64 MiB costs the digest checks and nothing else.

use crate::hash::{Digest, Framer, PAGE_SIZE, ZERO_PAGE_DIGEST, first_bad_page};
use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Version of the snapshot encoding; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// What a snapshot says about the component it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentMeta {
    pub name: String,
    /// The component's own version label (free text, from the deployer).
    pub version: String,
    /// Guest ABI version the module was built against.
    pub abi: u32,
    /// Location epoch of the component when the state was taken: grows by one each time the
    /// component moves, so the newest host is known everywhere.
    #[serde(default)]
    pub epoch: u64,
    /// The federation the component may only run within, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<String>,
    /// Labels every host of the component must carry.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub require: std::collections::BTreeMap<String, String>,
    /// How it chooses where to run (`pinned`, `follow-traffic`, `balance`; empty: pinned).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
}

/// The value of one mutable global. Floats are kept as bits so that NaN payloads survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(#[serde(with = "serde_bytes")] [u8; 16]),
}

impl Value {
    fn frame(&self, f: &mut Framer) {
        match *self {
            Value::I32(v) => f.u64(1).u64(v as u32 as u64),
            Value::I64(v) => f.u64(2).u64(v as u64),
            Value::F32(v) => f.u64(3).u64(v as u64),
            Value::F64(v) => f.u64(4).u64(v),
            Value::V128(v) => f.u64(5).bytes(&v),
        };
    }
}

/// One linear memory, as pages. Zero pages are left out: a fresh memory is zero already.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryImage {
    /// Length of the memory in bytes (a multiple of the 64 KiB Wasm page).
    pub size: u64,
    /// Indices of the pages that are not all zero, ascending.
    pub present: Vec<u32>,
    /// 32-byte blake3 digest of each present page, in the order of `present`.
    #[serde(with = "serde_bytes")]
    pub digests: Vec<u8>,
    /// [`PAGE_SIZE`] bytes for each present page, in the order of `present`. Encoded after the
    /// header, not in it.
    #[serde(skip)]
    pub data: Bytes,
}

impl MemoryImage {
    /// Capture a memory: find the pages that are not zero, then copy and hash each of them in
    /// one pass (the hash reads the copy while it is still in cache).
    pub fn capture(mem: &[u8]) -> MemoryImage {
        let present: Vec<u32> = mem
            .par_chunks_exact(PAGE_SIZE)
            .enumerate()
            .with_min_len(256)
            .filter(|(_, p)| !is_zero(p))
            .map(|(i, _)| i as u32)
            .collect();
        let mut data = crate::prefault::zeroed(present.len() * PAGE_SIZE);
        let mut digests = vec![0u8; present.len() * 32];
        data.par_chunks_exact_mut(PAGE_SIZE)
            .zip(digests.par_chunks_exact_mut(32))
            .zip(present.par_iter())
            .with_min_len(64)
            .for_each(|((dst, digest), &i)| {
                dst.copy_from_slice(page(mem, i));
                digest.copy_from_slice(blake3::hash(dst).as_bytes());
            });
        MemoryImage {
            size: mem.len() as u64,
            present,
            digests,
            data: data.into(),
        }
    }

    /// [`Self::capture`] of a copy this image may keep: the pages that are not zero are moved
    /// down in place, so the image holds no second copy of the memory.
    pub fn capture_owned(mut mem: Vec<u8>) -> MemoryImage {
        let size = mem.len() as u64;
        let mut present = Vec::new();
        let mut digests = Vec::new();
        let mut kept = 0;
        for i in 0..mem.len() / PAGE_SIZE {
            let at = i * PAGE_SIZE;
            if is_zero(&mem[at..at + PAGE_SIZE]) {
                continue;
            }
            digests.extend_from_slice(blake3::hash(&mem[at..at + PAGE_SIZE]).as_bytes());
            present.push(i as u32);
            if kept != i {
                mem.copy_within(at..at + PAGE_SIZE, kept * PAGE_SIZE);
            }
            kept += 1;
        }
        mem.truncate(kept * PAGE_SIZE);
        MemoryImage {
            size,
            present,
            digests,
            data: mem.into(),
        }
    }

    /// Build an image of `mem` holding only the pages in `present`, whose digests are in `all`.
    pub(crate) fn select(mem: &[u8], all: &[Digest], present: Vec<u32>) -> MemoryImage {
        let digests = present.iter().flat_map(|&i| all[i as usize]).collect();
        let mut data = crate::prefault::zeroed(present.len() * PAGE_SIZE);
        data.par_chunks_exact_mut(PAGE_SIZE)
            .zip(present.par_iter())
            .with_min_len(64)
            .for_each(|(dst, &i)| dst.copy_from_slice(page(mem, i)));
        MemoryImage {
            size: mem.len() as u64,
            present,
            digests,
            data: data.into(),
        }
    }

    /// Number of [`PAGE_SIZE`] pages in the memory.
    pub fn pages(&self) -> usize {
        (self.size / PAGE_SIZE as u64) as usize
    }

    /// The digest of every page, zero pages included.
    pub fn digest_map(&self) -> Vec<Digest> {
        let mut all = vec![*ZERO_PAGE_DIGEST; self.pages()];
        for (k, &i) in self.present.iter().enumerate() {
            all[i as usize].copy_from_slice(&self.digests[k * 32..k * 32 + 32]);
        }
        all
    }

    /// Write this image into `mem`, which must be `size` bytes long. Pages absent from the image
    /// are zeroed, but only below `dirty_len`: past it the caller guarantees `mem` is zero already
    /// (a freshly grown memory), which saves clearing what the kernel handed over clean.
    pub fn write_into(&self, mem: &mut [u8], dirty_len: usize) {
        assert_eq!(
            mem.len() as u64,
            self.size,
            "memory size differs from the image"
        );
        let slot = self.slot_map();
        crate::prefault::populate(mem);
        mem.par_chunks_exact_mut(PAGE_SIZE)
            .zip(slot.par_iter())
            .enumerate()
            .with_min_len(64)
            .for_each(|(i, (dst, &k))| {
                if k != u32::MAX {
                    dst.copy_from_slice(&self.data[k as usize * PAGE_SIZE..][..PAGE_SIZE]);
                } else if i * PAGE_SIZE < dirty_len {
                    dst.fill(0);
                }
            });
    }

    /// For each page, its position in `present`, or `u32::MAX` if absent.
    pub(crate) fn slot_map(&self) -> Vec<u32> {
        let mut slot = vec![u32::MAX; self.pages()];
        for (k, &i) in self.present.iter().enumerate() {
            slot[i as usize] = k as u32;
        }
        slot
    }

    fn frame(&self, f: &mut Framer) {
        f.u64(self.size).u32s(&self.present).bytes(&self.digests);
    }

    fn check_shape(&self, memory: usize) -> Result<(), SnapshotError> {
        let bad = |why: String| {
            Err(SnapshotError::Inconsistent(format!(
                "memory {memory}: {why}"
            )))
        };
        if !self.size.is_multiple_of(65536) {
            return bad(format!(
                "size {} is not a whole number of Wasm pages",
                self.size
            ));
        }
        let n = self.present.len();
        if self.digests.len() != n * 32 || self.data.len() != n * PAGE_SIZE {
            return bad(format!(
                "{n} pages listed but {} bytes of digests and {} bytes of data",
                self.digests.len(),
                self.data.len()
            ));
        }
        if self.present.windows(2).any(|w| w[0] >= w[1]) {
            return bad("page list is not strictly ascending".into());
        }
        if let Some(&last) = self.present.last()
            && last as usize >= self.pages()
        {
            return bad(format!("page {last} lies past the end of the memory"));
        }
        Ok(())
    }
}

/// Whether a page is all zero; stops at the first non-zero word, so live pages cost almost
/// nothing to check.
pub(crate) fn is_zero(page: &[u8]) -> bool {
    // SAFETY: any 8 initialised bytes are a valid u64.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

pub(crate) fn page(mem: &[u8], i: u32) -> &[u8] {
    &mem[i as usize * PAGE_SIZE..][..PAGE_SIZE]
}

/// The state of a component at a quiescent point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    pub meta: ComponentMeta,
    /// blake3 of the original (uninstrumented) module bytes.
    #[serde(with = "serde_bytes")]
    pub module_digest: Digest,
    /// Every defined memory, in index order.
    pub memories: Vec<MemoryImage>,
    /// Every defined mutable global, in index order.
    pub globals: Vec<Value>,
    /// The module itself, when the snapshot must stand alone (a checkpoint file a user carries
    /// to another node); left out where the receiver fetches modules by digest.
    #[serde(with = "serde_bytes", default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Vec<u8>>,
    /// Digest over every other field (page data through the page digests).
    #[serde(with = "serde_bytes")]
    pub digest: Digest,
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is truncated: it ends in the middle of its encoding")]
    Truncated,
    #[error("snapshot is not a continuum snapshot (bad CBOR: {0})")]
    Malformed(String),
    #[error("snapshot has {0} stray bytes after its end")]
    Trailing(usize),
    #[error("snapshot format {0} is not supported (this build reads format {FORMAT_VERSION})")]
    Format(u32),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "snapshot page {page} of memory {memory} does not match its digest: the snapshot is corrupt"
    )]
    BadPage { memory: usize, page: u32 },
    #[error("snapshot digest does not match its contents: the snapshot is corrupt or was altered")]
    BadDigest,
    #[error("the module inside the snapshot does not match the module digest the snapshot names")]
    BadModule,
}

impl Snapshot {
    /// A snapshot of the given state, digest computed.
    pub fn new(
        meta: ComponentMeta,
        module_digest: Digest,
        memories: Vec<MemoryImage>,
        globals: Vec<Value>,
    ) -> Snapshot {
        let mut s = Snapshot {
            format: FORMAT_VERSION,
            meta,
            module_digest,
            memories,
            globals,
            module: None,
            digest: [0; 32],
        };
        s.digest = s.compute_digest();
        s
    }

    /// The digest a snapshot of this state would have, from the page digest maps alone (a
    /// migration target checks its assembled state with it, without the page data at hand).
    pub fn digest_for(
        meta: &ComponentMeta,
        module_digest: Digest,
        memories: &[(u64, &[Digest])],
        globals: &[Value],
    ) -> Digest {
        let memories = memories
            .iter()
            .map(|(size, map)| {
                let present: Vec<u32> = (0..map.len() as u32)
                    .filter(|&i| map[i as usize] != *ZERO_PAGE_DIGEST)
                    .collect();
                MemoryImage {
                    size: *size,
                    digests: present.iter().flat_map(|&i| map[i as usize]).collect(),
                    present,
                    data: Bytes::new(),
                }
            })
            .collect();
        Snapshot::new(meta.clone(), module_digest, memories, globals.to_vec()).digest
    }

    /// Digest over every field but `digest` and `module` (the module is covered by
    /// `module_digest`).
    pub fn compute_digest(&self) -> Digest {
        let mut f = Framer::new("continuum-snapshot-v1");
        f.u64(self.format as u64)
            .bytes(self.meta.name.as_bytes())
            .bytes(self.meta.version.as_bytes())
            .u64(self.meta.abi as u64);
        // Fields added since the first snapshots are framed only when set, so that a snapshot
        // written before them keeps its digest.
        let m = &self.meta;
        if m.epoch != 0 {
            f.u64(m.epoch);
        }
        if m.federation.is_some() || !m.require.is_empty() || !m.policy.is_empty() {
            f.bytes(m.federation.as_deref().unwrap_or_default().as_bytes())
                .u64(m.require.len() as u64);
            for (k, v) in &m.require {
                f.bytes(k.as_bytes()).bytes(v.as_bytes());
            }
            f.bytes(m.policy.as_bytes());
        }
        f.bytes(&self.module_digest).u64(self.memories.len() as u64);
        for m in &self.memories {
            m.frame(&mut f);
        }
        f.u64(self.globals.len() as u64);
        for g in &self.globals {
            g.frame(&mut f);
        }
        f.finish()
    }

    /// Total bytes of linear memory the snapshot describes.
    pub fn memory_bytes(&self) -> u64 {
        self.memories.iter().map(|m| m.size).sum()
    }

    /// Encode: the CBOR header, then the page data as one CBOR byte string.
    pub fn encode(&self) -> Vec<u8> {
        encode_framed(
            self,
            &self.memories,
            self.module.as_ref().map_or(0, Vec::len),
        )
    }

    /// Write the encoding of [`Self::encode`] to `out` as it is made, without holding it whole.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        write_framed(self, &self.memories, out)
    }

    /// The digest of the module an encoded snapshot is of, read from its header alone (the
    /// page data is not read): to know which modules a node's saved state still needs.
    pub fn module_of(mut encoded: impl std::io::Read) -> Result<Digest, SnapshotError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(with = "serde_bytes")]
            module_digest: Digest,
        }
        let mut first = [0u8; 1];
        encoded
            .read_exact(&mut first)
            .map_err(|_| SnapshotError::Truncated)?;
        if first[0] != 0x82 {
            return Err(SnapshotError::Malformed(
                "it does not start with the two-item array of a continuum snapshot".into(),
            ));
        }
        let head: Head =
            ciborium::from_reader(encoded).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        Ok(head.module_digest)
    }

    /// Decode and verify: a snapshot that comes back from here is whole and untampered. The
    /// page data stays in `bytes` (no copy).
    pub fn decode(bytes: impl Into<Bytes>) -> Result<Snapshot, SnapshotError> {
        let (mut snap, data): (Snapshot, Bytes) = decode_framed(bytes.into())?;
        attach_data(&mut snap.memories, data)?;
        snap.verify()?;
        Ok(snap)
    }

    /// Check structure, the whole digest, every page digest and the embedded module.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        if self.format != FORMAT_VERSION {
            return Err(SnapshotError::Format(self.format));
        }
        for (i, m) in self.memories.iter().enumerate() {
            m.check_shape(i)?;
        }
        if self.compute_digest() != self.digest {
            return Err(SnapshotError::BadDigest);
        }
        for (memory, m) in self.memories.iter().enumerate() {
            if let Some(k) = first_bad_page(&m.data, &m.digests) {
                return Err(SnapshotError::BadPage {
                    memory,
                    page: m.present[k],
                });
            }
        }
        if let Some(module) = &self.module
            && *blake3::hash(module).as_bytes() != self.module_digest
        {
            return Err(SnapshotError::BadModule);
        }
        Ok(())
    }
}

/// Encode `header` (whose page data fields are skipped) and the page data of `memories`.
pub(crate) fn encode_framed(
    header: &impl Serialize,
    memories: &[MemoryImage],
    extra: usize,
) -> Vec<u8> {
    let data_len: usize = memories.iter().map(|m| m.data.len()).sum();
    let digests: usize = memories.iter().map(|m| m.digests.len()).sum();
    let mut out = Vec::with_capacity(data_len + digests + extra + 4096);
    write_framed(header, memories, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// The same encoding as [`encode_framed`], written as it is made: a large snapshot goes to a
/// file without a second copy of its pages in memory.
pub(crate) fn write_framed(
    header: &impl Serialize,
    memories: &[MemoryImage],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let data_len: usize = memories.iter().map(|m| m.data.len()).sum();
    out.write_all(&[0x82])?; // an array of two items
    ciborium::into_writer(header, &mut *out).map_err(|e| match e {
        ciborium::ser::Error::Io(e) => e,
        e => std::io::Error::other(e.to_string()),
    })?;
    let mut head = Vec::with_capacity(9);
    ciborium_ll::Encoder::from(&mut head)
        .push(ciborium_ll::Header::Bytes(Some(data_len)))
        .expect("writing to a Vec cannot fail");
    out.write_all(&head)?;
    for m in memories {
        out.write_all(&m.data)?;
    }
    Ok(())
}

/// Split an encoding made by [`encode_framed`] into its header and its page data.
pub(crate) fn decode_framed<T: serde::de::DeserializeOwned>(
    bytes: Bytes,
) -> Result<(T, Bytes), SnapshotError> {
    match bytes.first() {
        None => return Err(SnapshotError::Truncated),
        Some(0x82) => {}
        Some(_) => {
            return Err(SnapshotError::Malformed(
                "it does not start with the two-item array of a continuum snapshot".into(),
            ));
        }
    }
    let mut rest = &bytes[1..];
    let header = decode_cbor_prefix(&mut rest)?;
    let mut dec = ciborium_ll::Decoder::from(&mut rest);
    let len = match dec.pull() {
        Ok(ciborium_ll::Header::Bytes(Some(len))) => len,
        Ok(_) => {
            return Err(SnapshotError::Malformed(
                "page data is not a byte string".into(),
            ));
        }
        Err(_) => return Err(SnapshotError::Truncated),
    };
    if rest.len() < len {
        return Err(SnapshotError::Truncated);
    }
    if rest.len() > len {
        return Err(SnapshotError::Trailing(rest.len() - len));
    }
    let start = bytes.len() - rest.len();
    Ok((header, bytes.slice(start..)))
}

/// Give each memory its share of `data`, by the length its page list implies.
pub(crate) fn attach_data(memories: &mut [MemoryImage], data: Bytes) -> Result<(), SnapshotError> {
    let mut at = 0usize;
    for (i, m) in memories.iter_mut().enumerate() {
        let len = m.present.len() * PAGE_SIZE;
        if at + len > data.len() {
            return Err(SnapshotError::Inconsistent(format!(
                "memory {i} lists more pages than the page data holds"
            )));
        }
        m.data = data.slice(at..at + len);
        at += len;
    }
    if at != data.len() {
        return Err(SnapshotError::Inconsistent(format!(
            "{} bytes of page data belong to no listed page",
            data.len() - at
        )));
    }
    Ok(())
}

/// Decode one CBOR value from the front of `bytes`, advancing it.
fn decode_cbor_prefix<T: serde::de::DeserializeOwned>(
    bytes: &mut &[u8],
) -> Result<T, SnapshotError> {
    ciborium::de::from_reader(bytes).map_err(|e| match e {
        ciborium::de::Error::Io(_) => SnapshotError::Truncated,
        ciborium::de::Error::Syntax(at) => {
            SnapshotError::Malformed(format!("syntax error at byte {at}"))
        }
        ciborium::de::Error::Semantic(at, msg) => SnapshotError::Malformed(match at {
            Some(at) => format!("{msg} at byte {at}"),
            None => msg,
        }),
        ciborium::de::Error::RecursionLimitExceeded => {
            SnapshotError::Malformed("nested too deeply".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ComponentMeta {
        ComponentMeta {
            name: "t".into(),
            version: "1".into(),
            abi: 1,
            epoch: 1,
            ..Default::default()
        }
    }

    fn sample() -> Snapshot {
        let mut mem = vec![0u8; 2 * 65536];
        mem[5] = 1;
        mem[3 * PAGE_SIZE + 7] = 9;
        mem[2 * 65536 - 1] = 0xff;
        Snapshot::new(
            meta(),
            [7; 32],
            vec![MemoryImage::capture(&mem)],
            vec![Value::I32(-5), Value::F64(f64::NAN.to_bits())],
        )
    }

    #[test]
    fn an_image_captured_in_place_is_the_one_captured_from_a_copy() {
        let mut mem = vec![0u8; 40 * PAGE_SIZE];
        for (i, b) in mem.iter_mut().enumerate().step_by(7000) {
            *b = (i % 251) as u8 + 1;
        }
        assert_eq!(
            MemoryImage::capture_owned(mem.clone()),
            MemoryImage::capture(&mem)
        );
        assert_eq!(
            MemoryImage::capture_owned(vec![0; 3 * PAGE_SIZE]),
            MemoryImage::capture(&[0; 3 * PAGE_SIZE])
        );
    }

    #[test]
    fn roundtrip_keeps_only_nonzero_pages() {
        let s = sample();
        assert_eq!(s.memories[0].present, vec![0, 3, 31]);
        let back = Snapshot::decode(s.encode()).unwrap();
        assert_eq!(back, s);
        let mut mem = vec![0xAAu8; 2 * 65536];
        let len = mem.len();
        back.memories[0].write_into(&mut mem, len);
        assert_eq!(mem[5], 1);
        assert_eq!(mem[3 * PAGE_SIZE + 7], 9);
        assert_eq!(mem[6], 0);
        assert_eq!(mem[2 * 65536 - 1], 0xff);
    }

    #[test]
    fn the_module_is_read_from_the_header_alone() {
        let bytes = sample().encode();
        // The page data is not needed: the header's prefix is enough.
        let header = bytes.len() - sample().memories[0].data.len();
        assert_eq!(Snapshot::module_of(&bytes[..header]).unwrap(), [7; 32]);
        assert!(Snapshot::module_of(&b"not a snapshot"[..]).is_err());
        assert!(Snapshot::module_of(&bytes[..10]).is_err());
    }

    #[test]
    fn truncated_is_refused() {
        let bytes = sample().encode();
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            let err = Snapshot::decode(bytes[..cut].to_vec()).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Truncated),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                Snapshot::decode(b).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn embedded_module_must_match_digest() {
        let mut s = sample();
        s.module = Some(b"not the module".to_vec());
        let err = Snapshot::decode(s.encode()).unwrap_err();
        assert!(matches!(err, SnapshotError::BadModule), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(
            Snapshot::decode(bytes),
            Err(SnapshotError::Trailing(1))
        ));
    }
}
