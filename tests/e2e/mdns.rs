//! mDNS discovery on a real (virtual) LAN: three nodes in network namespaces this test creates,
//! joined by veth pairs to a bridge in a namespace of its own, find each other with no
//! `--join`. Multicast never leaves those namespaces. Needs root and iproute2; says so and
//! skips otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SUBNET: &str = "10.231.7";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces and links made for one test, removed when dropped.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
    nodes: Vec<Child>,
}

impl Lan {
    fn new(n: usize) -> Result<Lan, String> {
        let tag = format!("ctm{}", std::process::id());
        let mut lan = Lan {
            bridge: format!("{tag}br"),
            hosts: Vec::new(),
            nodes: Vec::new(),
        };
        let b = lan.bridge.clone();
        ip(&["netns", "add", &b])?;
        ip(&["-n", &b, "link", "set", "lo", "up"])?;
        ip(&["-n", &b, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &b, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let h = format!("{tag}h{i}");
            ip(&["netns", "add", &h])?;
            lan.hosts.push(h.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &h, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &b,
            ])?;
            ip(&["-n", &b, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &b, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{SUBNET}.{i}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
            ip(&["-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }

    /// Start a node in host `i` (1-based), mDNS on, no --join.
    fn start(&mut self, i: usize, dir: &Path) {
        let addr = format!("{SUBNET}.{i}");
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i - 1],
                env!("CARGO_BIN_EXE_continuum"),
                "node",
                "--data-dir",
            ])
            .arg(dir)
            .args([
                "--http",
                &format!("{addr}:7070"),
                "--p2p",
                &format!("/ip4/{addr}/udp/0/quic-v1"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes.push(child);
    }

    /// `continuum status --wait-peers`, run inside host `i`.
    fn wait_peers(&self, i: usize, dir: &Path, n: usize) -> Result<serde_json::Value, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i - 1],
                env!("CARGO_BIN_EXE_continuum"),
                "status",
                "--json",
            ])
            .args(["--wait-peers", &n.to_string(), "--timeout", "30s"])
            .args(["--node", &format!("http://{SUBNET}.{i}:7070"), "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in self.hosts.iter().chain(std::iter::once(&self.bridge)) {
            let _ = ip(&["netns", "del", h]);
        }
    }
}

#[test]
fn mdns_finds_neighbours_without_join() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIPPED mdns_finds_neighbours_without_join: creating network namespaces needs root"
        );
        return;
    }
    let mut lan = match Lan::new(3) {
        Ok(lan) => lan,
        Err(e) => {
            println!(
                "SKIPPED mdns_finds_neighbours_without_join: cannot create network namespaces: {e}"
            );
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|i| tmp.path().join(format!("node{i}")))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        lan.start(i + 1, dir);
    }
    let mut ids = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let status = lan.wait_peers(i + 1, dir, 2).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            panic!(
                "node {} did not find its neighbours by mDNS: {e}\n{log}",
                i + 1
            )
        });
        ids.push(status["peer_id"].as_str().unwrap().to_string());
        assert_eq!(status["peers"].as_array().unwrap().len(), 2);
    }
    for (i, dir) in dirs.iter().enumerate() {
        let status = lan.wait_peers(i + 1, dir, 2).unwrap();
        let seen: std::collections::BTreeSet<&str> = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap())
            .collect();
        let others: std::collections::BTreeSet<&str> = ids
            .iter()
            .filter(|id| **id != ids[i])
            .map(String::as_str)
            .collect();
        assert_eq!(seen, others, "node {}", i + 1);
    }
    let log = std::fs::read_to_string(dirs[0].with_extension("log")).unwrap();
    assert!(log.contains("found by mDNS"), "{log}");
}
