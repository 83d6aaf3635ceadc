//! Live-migration benchmark for BENCHMARKS.md: moves a `churn` component back and forth
//! between two running nodes for each state size, write rate and mode, and prints a table of
//! downtime (freeze to the target's Ready, as the source measured it), total time, and the
//! latency of requests sent every 2 ms through the first node meanwhile (the slowest of them
//! waited out the freeze), next to the latency of the same requests during a quiet second
//! before each migration, in the same run.
//!
//! Run: `scripts/bench.sh migrate` (it starts the nodes and builds the guests), or
//! `cargo run --release -p continuum --example migbench -- --a DIR_A --b DIR_B`.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use continuum::client;
use continuum::datadir::read_node_json;
use continuum::migration::Progress;
use http::Method;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Data directories of the two nodes.
    #[arg(long)]
    a: PathBuf,
    #[arg(long)]
    b: PathBuf,
    /// The churn component (target/guests/churn.wasm).
    #[arg(long, default_value = "target/guests/churn.wasm")]
    wasm: PathBuf,
    /// State sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    sizes: Vec<u64>,
    /// Share of the pages rewritten every 100 ms, percent.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10")]
    dirty: Vec<u64>,
    /// Modes to run: pre-copy, stop-and-copy.
    #[arg(long, value_delimiter = ',', default_value = "pre-copy,stop-and-copy")]
    modes: Vec<String>,
    /// Migrations per cell.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also print (to stderr) each request during a migration slower than this, ms, with
    /// when it started after the migration did: to see which phase holds them up.
    #[arg(long)]
    slow_ms: Option<f64>,
    /// Send the requests at this real-time priority, as the nodes' `--realtime`: a client on
    /// the same cores as a migration's bulk work would otherwise wait for the kernel's tick
    /// itself (a client on another host does not).
    #[arg(long, value_name = "PRIORITY")]
    realtime: Option<u8>,
}

struct Node {
    addr: SocketAddr,
    token: String,
    peer: String,
}

impl Node {
    fn open(dir: &Path) -> Result<Node> {
        let info = read_node_json(dir)?;
        Ok(Node {
            addr: info.http.trim_start_matches("http://").parse()?,
            token: std::fs::read_to_string(dir.join("admin.token"))?
                .trim()
                .to_string(),
            peer: info.peer_id,
        })
    }

    async fn call(&self, method: Method, target: &str, body: impl Into<Bytes>) -> Result<Bytes> {
        let r = client::h1(self.addr, method, target, body.into(), Some(&self.token)).await?;
        if r.status >= 300 {
            bail!("{target}: {} {}", r.status, r.text());
        }
        Ok(r.body)
    }

    /// Move `name` to `to`; the migration's report, and when (ms after the start) each step
    /// it went through began.
    async fn migrate(
        &self,
        name: &str,
        to: &Node,
        stop_and_copy: bool,
    ) -> Result<(Progress, Vec<(String, f64)>)> {
        let body = serde_json::json!({ "to": to.peer, "stop_and_copy": stop_and_copy });
        let p: Progress = serde_json::from_slice(
            &self
                .call(
                    Method::POST,
                    &format!("/v1/components/{name}/migrate"),
                    serde_json::to_vec(&body)?,
                )
                .await?,
        )?;
        let started = Instant::now();
        let mut steps: Vec<(String, f64)> = Vec::new();
        loop {
            let p: Progress = serde_json::from_slice(
                &self
                    .call(Method::GET, &format!("/v1/migrations/{}", p.id), "")
                    .await?,
            )?;
            if steps.last().is_none_or(|(s, _)| *s != p.step) {
                steps.push((p.step.clone(), started.elapsed().as_secs_f64() * 1e3));
            }
            if p.finished {
                return Ok((p, steps));
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("migration {} did not finish in 120 s", p.id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// GET /ping every 2 ms over one kept-alive connection until `stop`; when each started and
/// its latency.
async fn probe(
    addr: SocketAddr,
    target: String,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(Instant, Duration)>> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let req = http::Request::get(&target)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        let resp = send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status != 200 {
            bail!("probe got {status}");
        }
        out.push((started, started.elapsed()));
    }
    Ok(out)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pct(v: &[Duration], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(p) = args.realtime {
        continuum::priority::realtime(p)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(continuum::priority::request_path)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let (a, b) = (Node::open(&args.a)?, Node::open(&args.b)?);
    let wasm = std::fs::read(&args.wasm).with_context(|| format!("{}", args.wasm.display()))?;
    println!(
        "| state | rewritten per 100 ms | mode | rounds | last delta | downtime p50 (max) | total p50 | held requests: n, wait p50 / p99 | all requests meanwhile p50 / p99 / max | the same in a quiet second before each p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &mib in &args.sizes {
        // A name of this run's own: the mesh may still route the last run's (removed on the
        // node that held it last) to that node for a while, and refuse the name meanwhile.
        let name = format!("churn{mib}-{}", std::process::id());
        a.call(Method::PUT, &format!("/v1/components/{name}"), wasm.clone())
            .await?;
        a.call(Method::POST, &format!("/c/{name}/fill?mb={mib}"), "")
            .await?;
        let mut host = (&a, &b);
        for &pct_dirty in &args.dirty {
            // pct % of the pages per 100 ms = ten 10 ms ticks.
            let kb = mib * 1024 * pct_dirty / 100 / 10;
            host.0
                .call(Method::POST, &format!("/c/{name}/churn?kb={kb}"), "")
                .await?;
            for stop_and_copy in [false, true] {
                let mode = if stop_and_copy {
                    "stop-and-copy"
                } else {
                    "pre-copy"
                };
                if !args.modes.iter().any(|m| m == mode) {
                    continue;
                }
                let (mut down, mut total, mut rounds, mut last) = (vec![], vec![], vec![], vec![]);
                let (mut lat, mut held, mut quiet) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..args.runs {
                    // First a quiet second (after the last migration settled), for comparison.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let stop = Arc::new(AtomicBool::new(false));
                    let probing =
                        tokio::spawn(probe(a.addr, format!("/c/{name}/ping"), stop.clone()));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    stop.store(true, Ordering::Relaxed);
                    quiet.extend(probing.await??.into_iter().map(|(_, d)| d));
                    let stop = Arc::new(AtomicBool::new(false));
                    let probing =
                        tokio::spawn(probe(a.addr, format!("/c/{name}/ping"), stop.clone()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let began = Instant::now();
                    let (p, steps) = host.0.migrate(&name, host.1, stop_and_copy).await?;
                    let ended = began.elapsed();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    stop.store(true, Ordering::Relaxed);
                    let probed = probing.await??;
                    if let Some(ms) = args.slow_ms {
                        let at =
                            |t: Instant| t.saturating_duration_since(began).as_secs_f64() * 1e3;
                        let slow: Vec<String> = probed
                            .iter()
                            .filter(|(_, d)| d.as_secs_f64() * 1e3 > ms)
                            .map(|&(t, d)| {
                                format!("{:.1} ms at {:.0}", d.as_secs_f64() * 1e3, at(t))
                            })
                            .collect();
                        let all: Vec<Duration> = probed.iter().map(|&(_, d)| d).collect();
                        let steps: Vec<String> = steps
                            .iter()
                            .map(|(s, t)| format!("{s} at {t:.0}"))
                            .collect();
                        eprintln!(
                            "{name} to {}: {:.0} ms ({}), {} requests, p99 {:.1} ms; slower than {ms} ms: {}",
                            &host.1.peer[host.1.peer.len().saturating_sub(6)..],
                            ended.as_secs_f64() * 1e3,
                            steps.join(", "),
                            all.len(),
                            pct(&all, 0.99),
                            slow.join(", ")
                        );
                    }
                    lat.extend(probed.into_iter().map(|(_, d)| d));
                    held.extend(
                        p.held_ms
                            .iter()
                            .map(|&ms| Duration::from_secs_f64(ms / 1000.0)),
                    );
                    let r = p
                        .report
                        .with_context(|| format!("migration failed: {:?}", p.error))?;
                    down.push(r.downtime_ms);
                    total.push(r.total_ms);
                    rounds.push(r.rounds as u64);
                    last.push(r.final_bytes);
                    host = (host.1, host.0);
                }
                let max_down = *down.iter().max().unwrap_or(&0);
                println!(
                    "| {mib} MiB | {pct_dirty} % ({kb} KiB/10 ms) | {mode} | {} | {} KiB | {} ms ({max_down} ms) | {} ms | {}, {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms |",
                    median(&mut rounds),
                    median(&mut last) / 1024,
                    median(&mut down),
                    median(&mut total),
                    held.len(),
                    pct(&held, 0.5),
                    pct(&held, 0.99),
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0),
                    pct(&quiet, 0.5),
                    pct(&quiet, 0.99),
                    pct(&quiet, 1.0),
                );
            }
        }
        host.0
            .call(Method::DELETE, &format!("/v1/components/{name}"), "")
            .await?;
    }
    Ok(())
}
