//! Checkpoint, restore and delta cost for 1, 16 and 64 MiB of component state.
//!
//! Run: `cargo bench -p continuum-migrate --bench snapshot` (scripts/bench.sh does).
//! The memory is filled with pseudo-random bytes so that no page is zero and nothing is
//! skipped: the figures are for state that is all live.

use continuum_migrate::{ComponentMeta, Snapshot, StateHandles, instrument};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use wasmtime::{Engine, Instance, Memory, Module, Store};

const SIZES_MIB: [u64; 3] = [1, 16, 64];

struct Setup {
    engine: Engine,
    module: Module,
    store: Store<()>,
    handles: StateHandles,
    mem: Memory,
}

fn setup(mib: u64) -> Setup {
    let pages = mib * 16; // 64 KiB Wasm pages
    let wat = format!(
        r#"(module (memory (export "memory") {pages})
            (global (mut i32) (i32.const 1)) (global (mut i64) (i64.const 2))
            (func (export "touch") (param i32) (i32.store (local.get 0) (i32.const 7))))"#
    );
    let engine = Engine::default();
    let module = Module::new(&engine, instrument(&wat::parse_str(wat).unwrap()).unwrap()).unwrap();
    let mut store = Store::new(&engine, ());
    let inst = Instance::new(&mut store, &module, &[]).unwrap();
    let handles = StateHandles::new(&mut store, &inst).unwrap();
    let mem = inst.get_memory(&mut store, "memory").unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in mem.data_mut(&mut store).chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    Setup {
        engine,
        module,
        store,
        handles,
        mem,
    }
}

fn meta() -> ComponentMeta {
    ComponentMeta {
        name: "bench".into(),
        version: "1".into(),
        abi: 1,
        epoch: 1,
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for mib in SIZES_MIB {
        let mut s = setup(mib);
        g.throughput(Throughput::Bytes(mib << 20));

        // Checkpoint: hash every page, copy the pages out, read the globals.
        g.bench_with_input(
            BenchmarkId::new("checkpoint", format!("{mib}MiB")),
            &mib,
            |b, _| b.iter(|| s.handles.capture(&mut s.store, meta(), [0; 32]).unwrap()),
        );

        // Restore: a fresh instance of the module with the snapshot written into it.
        let snap = s.handles.capture(&mut s.store, meta(), [0; 32]).unwrap();
        g.bench_with_input(
            BenchmarkId::new("restore", format!("{mib}MiB")),
            &mib,
            |b, _| {
                b.iter(|| {
                    let mut store = Store::new(&s.engine, ());
                    let inst = Instance::new(&mut store, &s.module, &[]).unwrap();
                    let h = StateHandles::new(&mut store, &inst).unwrap();
                    h.restore(&mut store, &snap).unwrap();
                    store
                })
            },
        );

        // Decode: parse the CBOR and verify every page digest (what a receiver does first).
        let bytes = bytes::Bytes::from(snap.encode());
        g.bench_with_input(
            BenchmarkId::new("decode+verify", format!("{mib}MiB")),
            &mib,
            |b, _| b.iter(|| Snapshot::decode(bytes.clone()).unwrap()),
        );

        // Delta: 1 % of the pages written since the base; find and copy them.
        let base: Vec<_> = snap.memories.iter().map(|m| m.digest_map()).collect();
        for page in s
            .mem
            .data_mut(&mut s.store)
            .chunks_exact_mut(4096)
            .step_by(100)
        {
            page[0] ^= 0xff;
        }
        g.bench_with_input(
            BenchmarkId::new("delta-1pct", format!("{mib}MiB")),
            &mib,
            |b, _| b.iter(|| s.handles.capture_changed(&s.store, &base, None)),
        );

        // The same with the kernel's write tracking (userfaultfd + PAGEMAP_SCAN): only the
        // written pages are hashed. Each iteration writes 1 % of the pages (untimed) first.
        if let Ok(mut tracking) = s.handles.track(&s.store) {
            g.bench_with_input(
                BenchmarkId::new("delta-1pct-tracked", format!("{mib}MiB")),
                &mib,
                |b, _| {
                    b.iter_custom(|iters| {
                        let mut spent = Duration::ZERO;
                        for n in 0..iters {
                            let mem = s.mem.data_mut(&mut s.store);
                            for page in mem.chunks_exact_mut(4096).step_by(100) {
                                page[..8].copy_from_slice(&n.to_le_bytes());
                            }
                            let started = std::time::Instant::now();
                            let round =
                                s.handles
                                    .capture_changed(&s.store, &base, Some(&mut tracking));
                            spent += started.elapsed();
                            std::hint::black_box(round);
                        }
                        spent
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
