//! `continuum compile`: the ahead-of-time path. A small board started with `--no-compile`
//! never runs Cranelift; a bigger machine compiles for it (Pulley's bytecode is the same on
//! every host of a pointer width), and the board's operator copies the file into its modules
//! directory. Compiled code never travels between nodes: only an operator puts it there.

use crate::runtime::{EngineKind, precompile};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The module: a wasm32-wasip1 module built with continuum-guest.
    file: PathBuf,
    /// The engine of the node that will run it.
    #[arg(long, value_enum, default_value = "pulley")]
    engine: EngineKind,
    /// That node's architecture, as its `status` says it (x86_64, aarch64, riscv64, arm...);
    /// native code (cranelift) only for this host's.
    #[arg(long, default_value = std::env::consts::ARCH)]
    arch: String,
    /// Where to write it: that node's DATA_DIR/modules, or a directory to copy from.
    #[arg(short = 'o', long = "out", default_value = ".")]
    out: PathBuf,
}

impl CompileArgs {
    pub fn run(self) -> Result<()> {
        let wasm = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let (name, code) = precompile(&wasm, self.engine, &self.arch)
            .with_context(|| format!("compiling {}", self.file.display()))?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let path = self.out.join(name);
        crate::datadir::write_atomic(&path, &code)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{} ({} bytes): {} for {} nodes; put it in the node's DATA_DIR/modules",
            path.display(),
            code.len(),
            self.engine,
            self.arch
        );
        Ok(())
    }
}
