//! `cargo run -p continuum-sim --release -- --scenario churn --nodes 100 --seed 1`
//! Prints a summary whose last line is `trace_hash=<hex>`; with `--out DIR`, writes the
//! per-second figures as CSV there.

use anyhow::{Context, Result, bail};
use clap::Parser;
use continuum_sim::churn::{self, Churn};
use continuum_sim::roaming::{self, Roaming};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Deterministic simulator of Continuum swarms")]
struct Args {
    /// The scenario: churn (nodes join, fail and come back; membership must keep up), or
    /// roaming (vehicles cross a grid of roadside nodes; their twins should follow them).
    #[arg(long, default_value = "churn")]
    scenario: String,
    /// roaming: the twins' placement policy (follow-traffic or pinned).
    #[arg(long, default_value = "follow-traffic")]
    policy: String,
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
    let seconds = (a.minutes * 60.0) as u64;
    let (summary, csv, trace_hash) = match a.scenario.as_str() {
        "churn" => {
            let o = churn::run(&Churn {
                nodes: a.nodes,
                seed: a.seed,
                seconds,
                every_ms: 5_000,
                down_ms: 30_000,
                links: 4,
            });
            (o.summary, o.csv, o.trace_hash)
        }
        "roaming" => {
            let policy = a.policy.parse().map_err(anyhow::Error::msg)?;
            let o = roaming::run(&Roaming::new(a.nodes, a.seed, seconds, policy));
            (o.summary, o.csv, o.trace_hash)
        }
        other => bail!("unknown scenario {other:?} (there are: churn, roaming)"),
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(format!("{}.csv", a.scenario)), &csv)?;
    }
    println!("{summary}");
    println!("wall time {:.2} s", started.elapsed().as_secs_f64());
    println!("trace_hash={trace_hash}");
    Ok(())
}
