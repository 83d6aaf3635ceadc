//! `cargo run -p continuum-sim --release -- --scenario churn --nodes 100 --seed 1`
//! Prints a summary whose last line is `trace_hash=<hex>`; with `--out DIR`, writes the
//! per-second figures as CSV there.

use anyhow::{Context, Result, bail};
use clap::Parser;
use continuum_sim::churn::{self, Churn};
use continuum_sim::flash_crowd::{self, FlashCrowd};
use continuum_sim::roaming::{self, Roaming};

fn policy(a: &Args, default: &str) -> Result<continuum_gossip::Policy> {
    a.policy
        .as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(anyhow::Error::msg)
}
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Deterministic simulator of Continuum swarms")]
struct Args {
    /// The scenario: churn (nodes join, fail and come back; membership must keep up),
    /// roaming (vehicles cross a grid of roadside nodes; their twins should follow them), or
    /// flash-crowd (a crowd in one region overloads the hosts of a few components).
    #[arg(long, default_value = "churn")]
    scenario: String,
    /// The components' placement policy: pinned, follow-traffic (roaming's default) or
    /// balance (flash-crowd's default).
    #[arg(long)]
    policy: Option<String>,
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
            let policy = policy(&a, "follow-traffic")?;
            let o = roaming::run(&Roaming::new(a.nodes, a.seed, seconds, policy));
            (o.summary, o.csv, o.trace_hash)
        }
        "flash-crowd" => {
            let policy = policy(&a, "balance")?;
            let o = flash_crowd::run(&FlashCrowd::new(a.nodes, a.seed, seconds, policy));
            (o.summary, o.csv, o.trace_hash)
        }
        other => bail!("unknown scenario {other:?} (there are: churn, roaming, flash-crowd)"),
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
