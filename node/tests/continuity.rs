//! Property: checkpoint a component at any point of any request sequence, restore the snapshot
//! into a fresh Engine and Store, of either kind (Cranelift's native code, Pulley's
//! interpreter), and the continuation answers byte for byte like the instance that was never
//! interrupted.
//!
//! Needs the example components: `scripts/build-guests.sh` (scripts/test.sh runs it).

use continuum::runtime::{EngineKind, Instance, Runtime, RuntimeLimits};
use continuum_guest::{Request, Response};
use continuum_migrate::{ComponentMeta, Snapshot};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

fn guest(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/guests/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the example components with scripts/build-guests.sh",
            path.display()
        )
    })
}

/// Compiled modules are cached here, so each fresh engine loads them without recompiling.
fn module_cache() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf()
}

fn runtime(kind: EngineKind) -> Runtime {
    let limits = RuntimeLimits {
        memory_cap: 256 << 20,
        call_timeout: Duration::from_secs(10),
        queue_depth: 16,
        max_body: 8 << 20,
        max_calls: 16,
        max_depth: 16,
    };
    Runtime::new(limits, Some(module_cache()), kind).unwrap()
}

fn req(method: &str, target: &str, body: &[u8]) -> Request {
    Request {
        method: method.into(),
        target: target.into(),
        headers: vec![("content-type".into(), b"application/octet-stream".to_vec())],
        body: body.to_vec(),
    }
}

/// Run `ops` once without interruption, and once with a checkpoint after `split` of them and a
/// restore into a new engine of kind `to`; return the answers to `ops[split..]` from both runs.
fn both_ways(
    wasm: &[u8],
    ops: &[Request],
    split: usize,
    (from, to): (EngineKind, EngineKind),
) -> (Vec<Response>, Vec<Response>) {
    let meta = ComponentMeta {
        name: "c".into(),
        version: "1".into(),
        abi: 1,
        epoch: 1,
        ..Default::default()
    };
    let rt = runtime(from);
    let module = rt.load(wasm).unwrap();
    let mut whole = Instance::fresh(&rt, module.clone(), meta.clone()).unwrap();
    let expected: Vec<Response> = ops.iter().map(|r| whole.call(r).unwrap()).collect();

    let mut first = Instance::fresh(&rt, module, meta).unwrap();
    for r in &ops[..split] {
        first.call(r).unwrap();
    }
    let bytes = first.checkpoint().unwrap().encode();
    drop(first);

    let rt2 = runtime(to);
    let snap = Snapshot::decode(bytes).unwrap();
    let mut second = Instance::restore(&rt2, rt2.load(wasm).unwrap(), &snap).unwrap();
    let got: Vec<Response> = ops[split..]
        .iter()
        .map(|r| second.call(r).unwrap())
        .collect();
    (expected[split..].to_vec(), got)
}

fn kv_op() -> impl Strategy<Value = Request> {
    let key = prop::sample::select(vec!["a", "b", "c", "long-key-name", "e"]);
    prop_oneof![
        4 => (key.clone(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(k, v)| req("PUT", &format!("/k/{k}"), &v)),
        3 => key.clone().prop_map(|k| req("GET", &format!("/k/{k}"), b"")),
        1 => key.prop_map(|k| req("DELETE", &format!("/k/{k}"), b"")),
        1 => (0usize..=1).prop_map(|mb| req("POST", &format!("/fill?mb={mb}"), b"")),
        1 => Just(req("GET", "/digest", b"")),
        1 => Just(req("GET", "/nowhere", b"")),
    ]
}

fn counter_op() -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => Just(req("POST", "/incr", b"")),
        1 => Just(req("GET", "/count", b"")),
        1 => Just(req("DELETE", "/count", b"")),
    ]
}

/// Where the run starts and where it is restored: both engines, both directions.
fn engines() -> impl Strategy<Value = (EngineKind, EngineKind)> {
    use EngineKind::{Cranelift, Pulley};
    prop::sample::select(vec![
        (Cranelift, Cranelift),
        (Cranelift, Pulley),
        (Pulley, Cranelift),
        (Pulley, Pulley),
    ])
}

fn ops_and_split(
    op: impl Strategy<Value = Request>,
    max: usize,
) -> impl Strategy<Value = (Vec<Request>, usize)> {
    prop::collection::vec(op, 1..max).prop_flat_map(|ops| {
        let n = ops.len();
        (Just(ops), 0..=n)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn kv_continues_exactly((mut ops, split) in ops_and_split(kv_op(), 40), engines in engines()) {
        ops.push(req("GET", "/digest", b""));
        let (expected, got) = both_ways(&guest("kv"), &ops, split, engines);
        prop_assert_eq!(expected, got);
    }

    #[test]
    fn counter_continues_exactly((mut ops, split) in ops_and_split(counter_op(), 60), engines in engines()) {
        ops.push(req("GET", "/count", b""));
        let (expected, got) = both_ways(&guest("counter"), &ops, split, engines);
        prop_assert_eq!(expected, got);
    }
}
