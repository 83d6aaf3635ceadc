//! A swarm of nodes that run Wasm differently: Cranelift's native code on one, Pulley's
//! interpreter (what 32-bit ARM boards run) on the other. Components move between them both
//! ways with exact state, under load, because a snapshot holds no native state; each node
//! compiles for itself and says what it runs.

use crate::mesh::{mesh, until_full_views};
use crate::migrate::{host_of, migrate, under_load};
use crate::support::{TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};

/// A node of the closed test swarm that may be slow: an interpreter, or an emulated
/// architecture. As on a small board, its operator gives requests (hashing 16 MiB of `kv` took
/// Pulley over a second on a busy machine, and longer under qemu-arm) and migrations more time
/// than the defaults, which are set for servers.
pub(crate) fn slow_host_args() -> Vec<String> {
    let mut a = crate::migrate::args(0);
    a.extend(["--call-timeout", "30s", "--migration-timeout", "60s"].map(String::from));
    a
}

/// Such a node running `engine`.
fn on(engine: &str) -> Vec<String> {
    let mut a = slow_host_args();
    a.extend(["--engine".into(), engine.into()]);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_move_between_a_cranelift_and_a_pulley_node_with_exact_state() {
    let nodes = mesh(2, |i| on(if i == 1 { "cranelift" } else { "pulley" }));
    let (a, b) = (&nodes[0], &nodes[1]);
    until_full_views(&[a, b], Duration::from_secs(30)).await;
    assert_eq!(a.status().await["engine"], "cranelift");
    assert_eq!(b.status().await["engine"], "pulley");
    let metrics = b.h1(Method::GET, "/metrics", b"").await.text();
    assert!(metrics.contains("engine=\"pulley\"} 1"), "{metrics}");

    // A component can be bound to the interpreter's nodes by their label.
    let counter = guest("counter");
    let pinned = [
        "deploy",
        &counter,
        "--name",
        "interp",
        "--require",
        "engine=pulley",
    ];
    let err = a.fails(&pinned);
    assert!(err.contains("engine=pulley"), "{err}");
    a.ok(&[&pinned[..], &["--on", b.peer_id()]].concat());
    let p = a.ok(&[
        "deploy",
        &guest("sensor-filter"),
        "--name",
        "sensor",
        "--on",
        b.peer_id(),
    ]);
    assert!(p.contains(b.peer_id()), "{p}");
    moves_both_ways_with_exact_state(a, b).await;

    // Each node cached code for itself only, named by engine and architecture.
    let arch = std::env::consts::ARCH;
    for (n, engine) in [(a, "cranelift"), (b, "pulley")] {
        let cached: Vec<String> = std::fs::read_dir(n.dir.join("modules"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.ends_with(".cwasm"))
            .collect();
        assert!(!cached.is_empty());
        assert!(
            cached
                .iter()
                .all(|f| f.ends_with(&format!(".{engine}-{arch}.cwasm"))),
            "{cached:?}"
        );
    }
}

/// `kv` with 16 MiB of state and `counter` under load go from `a` to `b` and back with
/// exact state and no failed request; `sensor` (deployed on `b`) keeps ticking across its
/// moves the other way.
pub(crate) async fn moves_both_ways_with_exact_state(a: &TestNode, b: &TestNode) {
    a.ok(&["deploy", &guest("kv"), "--name", "kv", "--on", a.peer_id()]);
    let r = a.h1(Method::POST, "/c/kv/fill?mb=16", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.h1(Method::PUT, "/c/kv/k/hello", b"world").await.status,
        201
    );
    let digest = a.h1(Method::GET, "/c/kv/digest", b"").await.text();
    for (from, to) in [(a, b), (b, a)] {
        let p = migrate(from, "kv", to, &[]);
        eprintln!(
            "kv 16 MiB {} -> {}: downtime {} ms, total {} ms",
            what(from).await,
            what(to).await,
            p["report"]["downtime_ms"],
            p["report"]["total_ms"]
        );
        let r = a.h1(Method::GET, "/c/kv/digest", b"").await;
        assert_eq!(
            (r.text(), host_of(&r)),
            (digest.clone(), to.peer_id().into())
        );
    }
    assert_eq!(
        b.h1(Method::GET, "/c/kv/k/hello", b"").await.text(),
        "world"
    );

    // Four round trips of counter under load; sensor goes the other way each time.
    let (downtimes, _, _) = under_load(a, b, |_| async move {
        let mut downtimes = Vec::new();
        for (from, to) in [(a, b), (b, a), (a, b), (b, a)] {
            let p = tokio::task::block_in_place(|| migrate(from, "counter", to, &[]));
            downtimes.push(p["report"]["downtime_ms"].as_u64().unwrap());
            let before = sensor_ticks(a).await;
            tokio::task::block_in_place(|| migrate(to, "sensor", from, &[]));
            let deadline = Instant::now() + Duration::from_secs(10);
            while sensor_ticks(a).await <= before {
                assert!(
                    Instant::now() < deadline,
                    "sensor stopped ticking at {before}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        downtimes
    })
    .await;
    eprintln!(
        "counter {} <-> {} under load, downtimes {downtimes:?} ms",
        what(a).await,
        what(b).await
    );
    let r = a.h1(Method::GET, "/c/sensor/stats", b"").await;
    let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    eprintln!("sensor-filter across the moves: {s}");
    assert_eq!(host_of(&r), b.peer_id());
}

async fn sensor_ticks(n: &TestNode) -> u64 {
    let r = n.h1(Method::GET, "/c/sensor/stats", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    s["ticks"].as_u64().unwrap()
}

/// `arch/engine` of a node, for the log.
async fn what(n: &TestNode) -> String {
    let s = n.status().await;
    format!(
        "{}/{}",
        s["arch"].as_str().unwrap(),
        s["engine"].as_str().unwrap()
    )
}

/// The ahead-of-time path: a node started with `--no-compile` (a small board) says so, refuses
/// a module nothing compiled for it with what to do, and a component cannot move there, losing
/// nothing; once `continuum compile` made the module's code for it, the same component moves
/// there and back with exact state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_compile_runs_only_what_was_compiled_for_it() {
    let nodes = mesh(2, |i| {
        let mut a = on(if i == 1 { "cranelift" } else { "pulley" });
        if i == 2 {
            a.push("--no-compile".into());
        }
        a
    });
    let (a, b) = (&nodes[0], &nodes[1]);
    until_full_views(&[a, b], Duration::from_secs(30)).await;
    let s = b.status().await;
    assert_eq!(s["compiles"], false, "{s:#}");
    assert_eq!(s["labels"]["compiles"], "no", "{s:#}");
    assert_eq!(a.status().await["labels"]["compiles"], "yes");
    assert!(b.ok(&["status"]).contains("precompiled modules only"));

    let counter = guest("counter");
    let err = b.fails(&["deploy", &counter, "--name", "here"]);
    assert!(
        err.contains("does not compile") && err.contains("continuum compile"),
        "{err}"
    );
    assert_eq!(
        b.metric("continuum_rejected_total{reason=\"bad_module\"}")
            .await,
        1
    );
    a.ok(&["deploy", &counter, "--name", "counter", "--on", a.peer_id()]);
    for _ in 0..5 {
        assert_eq!(a.h1(Method::POST, "/c/counter/incr", b"").await.status, 200);
    }
    let err = a.fails(&["migrate", "counter", "--to", b.peer_id()]);
    assert!(err.contains("does not compile"), "{err}");
    assert_eq!(
        b.metric("continuum_rejected_total{reason=\"bad_module\"}")
            .await,
        2
    );
    let r = a.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        (r.text().trim(), host_of(&r)),
        ("5", a.peer_id().to_string())
    );

    // Compiled elsewhere (here: by the CLI, for b's engine and architecture) into b's modules.
    let modules = b.dir.join("modules");
    let made = a.ok(&[
        "compile",
        &counter,
        "--engine",
        "pulley",
        "--out",
        modules.to_str().unwrap(),
    ]);
    let arch = std::env::consts::ARCH;
    assert!(made.contains(&format!(".pulley-{arch}.cwasm")), "{made}");
    migrate(a, "counter", b, &[]);
    let r = b.h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!(
        (r.text().trim(), host_of(&r)),
        ("6", b.peer_id().to_string())
    );
    migrate(b, "counter", a, &[]);
    let r = a.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        (r.text().trim(), host_of(&r)),
        ("6", a.peer_id().to_string())
    );
    // Deploying it on b works now too.
    b.ok(&["deploy", &counter, "--name", "here"]);

    // Pulley's bytecode for any architecture can be made here; native code only for this one.
    let elsewhere = b.dir.join("for-arm");
    let out = a.ok(&[
        "compile",
        &counter,
        "--arch",
        "arm",
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(out.contains(".pulley-arm.cwasm"), "{out}");
    let err = a.fails(&[
        "compile",
        &counter,
        "--engine",
        "cranelift",
        "--arch",
        "arm",
    ]);
    assert!(err.contains("with --engine pulley"), "{err}");
}
