//! `--realtime`: the request path runs at SCHED_RR, bulk work stays batch work, a component
//! that spins at real-time priority is still stopped at its deadline, and a host that refuses
//! real-time priority gets a clear error at start.

use crate::support::{TestNode, guest};
use http::Method;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether this host lets us run at real-time priority (root, CAP_SYS_NICE or `ulimit -r`).
fn realtime_allowed() -> bool {
    let ok = Command::new("chrt")
        .args(["-r", "1", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: this host refuses real-time priority (`chrt -r 1 true` failed)");
    }
    ok
}

/// Each thread of `pid` by name: (policy, real-time priority), from /proc.
fn threads(pid: u32) -> BTreeMap<String, Vec<(u32, u32)>> {
    let mut out: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ...": comm may hold spaces, the fields after it do not.
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 40 and 41 of stat(5) (rt_priority, policy), counted from 3 after comm.
        let (prio, policy) = (fields[37].parse().unwrap(), fields[38].parse().unwrap());
        out.entry(stat[open + 1..close].to_string())
            .or_default()
            .push((policy, prio));
    }
    out
}

const RR: u32 = 2;
const BATCH: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_request_path_and_batch_bulk_work() {
    if !realtime_allowed() {
        return;
    }
    let node = TestNode::start(&["--realtime", "10"]);
    assert!(
        node.log().contains("real-time priority 10"),
        "{}",
        node.log()
    );
    node.ok(&["deploy", &guest("counter")]);
    node.ok(&["deploy", &guest("misbehave"), "--name", "spin1"]);
    node.ok(&["deploy", &guest("misbehave"), "--name", "spin2"]);
    let t = threads(node.pid());
    let policy = |name: &str| {
        t.get(name)
            .unwrap_or_else(|| panic!("no thread {name} in {t:?}"))
            .clone()
    };
    for name in [
        "c:counter",
        "c:spin1",
        "mesh",
        "tokio-rt-worker",
        "continuum",
    ] {
        assert!(
            policy(name).iter().all(|&p| p == (RR, 10)),
            "{name}: {:?}",
            policy(name)
        );
    }
    assert_eq!(policy("epoch"), [(RR, 11)], "the deadline clock");
    assert!(
        policy("bulk-0").iter().all(|&(p, _)| p == BATCH),
        "bulk: {:?}",
        policy("bulk-0")
    );

    // Two components spinning at real-time priority, one per core of a 2-core host: each is
    // stopped at its deadline (1 s), and the node answers meanwhile.
    let spin = |name: &'static str| {
        let addr = node.addr();
        tokio::spawn(async move {
            let started = Instant::now();
            let path = format!("/c/{name}/spin");
            let r = continuum::client::h1(addr, Method::POST, &path, Default::default(), None)
                .await
                .unwrap();
            (r, started.elapsed())
        })
    };
    let spins = [spin("spin1"), spin("spin2")];
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for s in spins {
        let (r, took) = s.await.unwrap();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    }
    assert_eq!(node.h1(Method::GET, "/c/spin1/ok", b"").await.status, 200);
}

#[test]
fn a_host_that_refuses_realtime_is_told_why() {
    if !realtime_allowed() {
        return;
    }
    // Without CAP_SYS_NICE and with `ulimit -r` 0, as an unprivileged user would be.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("prlimit")
        .args(["--rtprio=0", "setpriv", "--bounding-set", "-sys_nice", "--"])
        .arg(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "node",
            "--no-mdns",
            "--http",
            "127.0.0.1:0",
            "--realtime",
            "10",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    assert!(
        err.contains("--realtime 10: the kernel refused real-time priority")
            && err.contains("CAP_SYS_NICE"),
        "{err}"
    );
}
