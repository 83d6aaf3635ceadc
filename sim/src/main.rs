//! `cargo run -p continuum-sim --release -- --scenario churn --nodes 100 --seed 1`
//! Prints a summary whose last line is `trace_hash=<hex>`; with `--out DIR`, writes the
//! per-second figures as CSV there.

use anyhow::{Context, Result, bail};
use clap::Parser;
use continuum_sim::churn::{self, Churn};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Deterministic simulator of Continuum swarms")]
struct Args {
    /// The scenario: churn (nodes join, fail and come back; membership must keep up).
    #[arg(long, default_value = "churn")]
    scenario: String,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual minutes to run after the joins.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Where to write CSV files.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let started = std::time::Instant::now();
    let outcome = match a.scenario.as_str() {
        "churn" => churn::run(&Churn {
            nodes: a.nodes,
            seed: a.seed,
            seconds: (a.minutes * 60.0) as u64,
            every_ms: 5_000,
            down_ms: 30_000,
            links: 4,
        }),
        other => bail!("unknown scenario {other:?} (there is: churn)"),
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("churn.csv"), &outcome.csv)?;
    }
    println!("{}", outcome.summary);
    println!("wall time {:.2} s", started.elapsed().as_secs_f64());
    println!("trace_hash={}", outcome.trace_hash);
    Ok(())
}
