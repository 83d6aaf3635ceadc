//! Moving a Wasm component's state: the snapshot format, page deltas, and (with the default
//! `runtime` feature) module instrumentation plus checkpoint/restore against Wasmtime.
//!
//! The state of a quiescent instance is its linear memories and mutable globals: no Wasm frame is
//! live between two calls. Instrumentation exports all of them (as Wizer does) so the host can
//! read and write them without the guest's help, and moves the start function out of the way so
//! that a restore never reruns initialisation.
//!
//! Snapshots are split into fixed pages with a blake3 digest each; the same digests drive deltas
//! (only the pages whose digest changed travel) and integrity checks (a truncated or tampered
//! snapshot is refused before it touches an instance).

mod delta;
#[cfg(target_os = "linux")]
mod dirty;
mod handshake;
mod hash;
mod live;
mod prefault;
mod snapshot;

#[cfg(feature = "runtime")]
mod capture;
#[cfg(feature = "instrument")]
mod instrument;

pub use delta::{Delta, MemoryDelta, WrittenPages, decode_pages, encode_pages, split_round};
#[cfg(target_os = "linux")]
pub use dirty::WriteTracker;
pub use handshake::{
    IN_DOUBT_ASKS, MigrationId, Offer, Outcome, Report, Source, SourceAction, SourceConfig,
    TAKEOVER_PROBES, Target, TargetAction, ToSource, ToTarget,
};
pub use hash::{Digest, PAGE_SIZE, ZERO_PAGE_DIGEST, digest_hex, page_digests};
pub use live::{FirstRound, LiveMemory};
pub use prefault::zeroed as prefaulted;
pub use snapshot::{ComponentMeta, FORMAT_VERSION, MemoryImage, Snapshot, SnapshotError, Value};

#[cfg(feature = "runtime")]
pub use capture::{CaptureError, StateHandles, Tracking};
#[cfg(feature = "instrument")]
pub use instrument::{
    EXPORT_GLOBAL_PREFIX, EXPORT_MEMORY_PREFIX, EXPORT_START, InstrumentError, instrument,
};
