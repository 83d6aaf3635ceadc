//! What runs a node's Wasm: Cranelift's native code where this host has a Cranelift backend
//! (x86_64, aarch64, riscv64, s390x), or Wasmtime's Pulley interpreter, which runs on any host
//! (32-bit ARM among them) at about a tenth of the speed. A snapshot holds no native state, so
//! a component moves between the two, and between architectures, like between two equal nodes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Cranelift,
    Pulley,
}

/// Why Cranelift cannot compile for the machine this binary runs on, if it cannot: this
/// architecture has no Cranelift backend (Wasmtime's own list), or it is a RISC-V host without
/// the vector extension, where Wasmtime 48 emits 16-byte vector moves for small `memory.copy`s
/// that its RISC-V backend can only lower with V (boards such as the StarFive JH7110 lack
/// it; Wasmtime 50 falls back to scalar moves there).
pub fn cranelift_missing() -> Option<&'static str> {
    if !cfg!(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "s390x"
    )) {
        return Some("Cranelift has no backend for this architecture");
    }
    #[cfg(all(target_arch = "riscv64", target_os = "linux"))]
    {
        // The kernel's hardware capabilities: one bit per single-letter extension.
        let v = 1 << (b'V' - b'A');
        // SAFETY: getauxval reads the process's auxiliary vector; no memory is passed.
        if unsafe { libc::getauxval(libc::AT_HWCAP) } & v == 0 {
            return Some(
                "this RISC-V host has no vector extension (V), which Wasmtime 48's Cranelift needs for the modules Rust builds",
            );
        }
    }
    None
}

impl Default for EngineKind {
    fn default() -> Self {
        if cranelift_missing().is_none() {
            EngineKind::Cranelift
        } else {
            EngineKind::Pulley
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "Cranelift cannot compile on this host ({host}): {0}; run Wasm here with --engine pulley (the default on it)",
        host = std::env::consts::ARCH
    )]
    NoCranelift(&'static str),
    #[error(
        "this build compiles native code for its own architecture only ({host}), not {0}; precompile for {0} with --engine pulley, or on a {0} host",
        host = std::env::consts::ARCH
    )]
    CraneliftCross(String),
    #[error(
        "unknown architecture {0}: Rust's names are x86_64, aarch64, riscv64, s390x, arm, x86, riscv32"
    )]
    UnknownArch(String),
    #[error("configuring Wasmtime: {0}")]
    Wasmtime(String),
}

impl EngineKind {
    /// The name nodes advertise (label `engine`) and print.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Cranelift => "cranelift",
            EngineKind::Pulley => "pulley",
        }
    }

    /// Wasmtime's configuration for this engine on this host.
    pub fn config(self) -> Result<wasmtime::Config, EngineError> {
        self.config_for(std::env::consts::ARCH)
    }

    /// Wasmtime's configuration for this engine on a host of `arch` (Rust's name for it):
    /// what `continuum compile` precompiles with, so that the node there finds the very
    /// settings it runs with. Pulley's bytecode depends only on pointer width and byte order,
    /// so any host can make it for any other; native code only for this host.
    pub fn config_for(self, arch: &str) -> Result<wasmtime::Config, EngineError> {
        let host = std::env::consts::ARCH;
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        match self {
            EngineKind::Cranelift if arch != host => {
                return Err(EngineError::CraneliftCross(arch.into()));
            }
            EngineKind::Cranelift if let Some(why) = cranelift_missing() => {
                return Err(EngineError::NoCranelift(why));
            }
            EngineKind::Cranelift => {}
            EngineKind::Pulley => {
                config
                    .target(pulley_target(arch)?)
                    .map_err(|e| EngineError::Wasmtime(format!("{e:#}")))?;
            }
        }
        Ok(config)
    }
}

/// Pulley's bytecode for a host of `arch`: its pointer width and byte order.
fn pulley_target(arch: &str) -> Result<&'static str, EngineError> {
    Ok(match arch {
        "x86_64" | "aarch64" | "riscv64" | "loongarch64" => "pulley64",
        "s390x" | "powerpc64" => "pulley64be",
        "arm" | "x86" | "riscv32" => "pulley32",
        // Any other host knows its own pointer width and byte order.
        host if host == std::env::consts::ARCH => match (
            cfg!(target_pointer_width = "64"),
            cfg!(target_endian = "big"),
        ) {
            (true, false) => "pulley64",
            (true, true) => "pulley64be",
            (false, false) => "pulley32",
            (false, true) => "pulley32be",
        },
        _ => return Err(EngineError::UnknownArch(arch.into())),
    })
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
