//! HTTP/3 load generator for the benchmarks: CONNS connections, each with STREAMS requests in
//! flight, for at most SECS seconds and MAX requests; prints requests/s and latency percentiles.
//!
//! Run: `cargo run --release -p continuum --example h3load -- --data-dir DIR /c/counter/incr`
//! (scripts/bench.sh does). The certificate fingerprint comes from DIR/node.json.

use anyhow::{Context, Result};
use clap::Parser;
use continuum::client::H3;
use http::Method;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Path to request, e.g. /c/counter/incr.
    target: String,
    /// Data directory of the node (for its address and certificate fingerprint).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    #[arg(long, default_value = "POST")]
    method: String,
    #[arg(long, default_value_t = 4)]
    conns: usize,
    #[arg(long, default_value_t = 16)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 5_000_000)]
    max: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let info = continuum::datadir::read_node_json(&args.data_dir)?;
    let addr = info
        .http
        .trim_start_matches("http://")
        .parse()
        .context("node address")?;
    let pin = continuum::tls::parse_pin(&info.cert_sha256)?;
    let method = Method::from_bytes(args.method.as_bytes())?;
    let per_task = args.max / (args.conns * args.streams) as u64;
    let deadline = Instant::now() + Duration::from_secs(args.secs);

    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..args.conns {
        let h3 = H3::connect(addr, pin).await?;
        for _ in 0..args.streams {
            let (mut h3, method, target) = (h3.clone(), method.clone(), args.target.clone());
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline && (lat.len() as u64) < per_task {
                    let t = Instant::now();
                    match h3
                        .request(method.clone(), &target, Default::default(), None)
                        .await
                    {
                        Ok(r) if r.status < 400 => lat.push(t.elapsed().as_micros() as u32),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        conns.push(h3);
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for c in conns {
        c.close().await;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "h3: {} requests in {elapsed:.1} s = {:.0} req/s, p50 {} us, p99 {} us, errors {errors} ({} conns x {} streams)",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        args.conns,
        args.streams
    );
    Ok(())
}
