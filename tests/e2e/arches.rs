//! A swarm of two architectures on one machine: a node of this build, and one of another
//! architecture's build (aarch64 on an x86_64 host, x86_64 on an aarch64 one, or
//! `CONTINUUM_FOREIGN_ARCH`: armv7, riscv64) under qemu-user. Components move between them
//! both ways with exact state and no failed request. scripts/cross-arch.sh runs it for armv7
//! (Pulley) and riscv64, by hand or nightly.
//!
//! The foreign binary is `target/TARGET/release/continuum`, which scripts/test.sh builds
//! (`scripts/release.sh --profile release TARGET`); without it or without the emulator the
//! test says so and passes, unless `CONTINUUM_REQUIRE_FOREIGN=1` (as scripts/test.sh sets).

use crate::engines::moves_both_ways_with_exact_state;
use crate::mesh::until_full_views;
use crate::support::TestNode;
use std::path::PathBuf;
use std::time::Duration;

/// The other architecture (`CONTINUUM_FOREIGN_ARCH`, else this host's pair: aarch64 on
/// x86_64, x86_64 on aarch64), its Rust target and its emulator.
fn foreign() -> (String, &'static str, &'static str) {
    let host_pair = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let arch = std::env::var("CONTINUUM_FOREIGN_ARCH").unwrap_or_else(|_| host_pair.into());
    let (target, emu) = match arch.as_str() {
        "x86_64" => ("x86_64-unknown-linux-musl", "qemu-x86_64"),
        "aarch64" => ("aarch64-unknown-linux-musl", "qemu-aarch64"),
        "armv7" => ("armv7-unknown-linux-musleabihf", "qemu-arm"),
        "riscv64" => ("riscv64gc-unknown-linux-musl", "qemu-riscv64"),
        other => panic!("CONTINUUM_FOREIGN_ARCH={other}: not x86_64, aarch64, armv7 or riscv64"),
    };
    // Rust calls 32-bit ARM `arm`; nodes advertise what Rust says.
    let arch = if arch == "armv7" { "arm".into() } else { arch };
    (arch, target, emu)
}

/// How to run the foreign node, or why it cannot run here.
fn foreign_program() -> Result<Vec<String>, String> {
    let (_, target, emu) = foreign();
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(target)
        .join("release/continuum");
    if !bin.exists() {
        return Err(format!(
            "no {} (build it: scripts/release.sh --profile release {target})",
            bin.display()
        ));
    }
    let which = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {emu}")])
        .output()
        .map_err(|e| e.to_string())?;
    if !which.status.success() {
        return Err(format!("no {emu} (apt-get install qemu-user)"));
    }
    Ok(vec![emu.to_string(), bin.to_string_lossy().into_owned()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_move_between_two_architectures_with_exact_state() {
    let program = match foreign_program() {
        Ok(p) => p,
        Err(why) if std::env::var("CONTINUUM_REQUIRE_FOREIGN").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: no foreign node: {why}");
            return;
        }
        Err(why) => panic!("CONTINUUM_REQUIRE_FOREIGN is set but {why}"),
    };
    let (arch, _, _) = foreign();
    let args = crate::migrate::args(0);
    let a = TestNode::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut b_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let join = a.p2p();
    b_args.extend(["--join", &join]);
    let b = TestNode::start_program(&program, &b_args);
    until_full_views(&[&a, &b], Duration::from_secs(60)).await;
    assert_eq!(b.status().await["arch"], arch);

    let p = a.ok(&[
        "deploy",
        &crate::support::guest("sensor-filter"),
        "--name",
        "sensor",
        "--on",
        b.peer_id(),
    ]);
    assert!(p.contains(b.peer_id()), "{p}");
    moves_both_ways_with_exact_state(&a, &b).await;
}
