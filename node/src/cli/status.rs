use super::{ClientArgs, human_bytes};
use crate::context::Status;
use anyhow::Result;
use clap::Args;
use http::Method;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Wait until the node sees at least this many peers (for scripts).
    #[arg(long, value_name = "N")]
    wait_peers: Option<usize>,
    /// Give up waiting after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    timeout: std::time::Duration,
    #[command(flatten)]
    client: ClientArgs,
}

impl StatusArgs {
    pub async fn run(self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = loop {
            let reply = match self
                .client
                .api(Method::GET, "/v1/status", Default::default())
                .await
            {
                Ok(r) => r,
                // While waiting, a node that is not up yet is just not ready.
                Err(e) if self.wait_peers.is_some() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!("waiting for the node: {e:#}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(want) = self.wait_peers else {
                break reply;
            };
            let s: Status = serde_json::from_slice(&reply.body)?;
            if s.peers.len() >= want {
                break reply;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the node sees {} peers, not {want}, after {:?}",
                    s.peers.len(),
                    self.timeout
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if self.client.json {
            println!("{}", reply.text().trim_end());
            return Ok(());
        }
        let s: Status = serde_json::from_slice(&reply.body)?;
        println!("peer id     {}", s.peer_id);
        let precompiled = if s.compiles {
            ""
        } else {
            ", precompiled modules only"
        };
        println!(
            "version     {} ({}, {}{precompiled})",
            s.version, s.arch, s.engine
        );
        println!("http        {}", s.http);
        println!("h3          {}", s.h3);
        println!("uptime      {} s", s.uptime_s);
        println!(
            "components  {} ({} of memory)",
            s.components,
            human_bytes(s.memory_bytes)
        );
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels      {}", labels.join(","));
        println!(
            "swarm       {}",
            s.swarm_key
                .as_deref()
                .map_or("open (no swarm key)".to_string(), |k| format!(
                    "closed by key {k}"
                ))
        );
        println!(
            "federations {}",
            s.federations
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        println!("peers       {}", s.peers.len());
        if !s.peers.is_empty() {
            println!(
                "  {:<54} {:<8} {:>5} {:<16} {:>9} {:>8}",
                "PEER", "ARCH", "LOAD", "LABELS", "LAST SEEN", "RTT"
            );
            for p in &s.peers {
                let labels: Vec<String> =
                    p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "  {:<54} {:<8} {:>5.2} {:<16} {:>7.1}s {:>8}",
                    p.peer_id,
                    p.arch,
                    p.load,
                    labels.join(","),
                    p.last_seen_ms as f64 / 1000.0,
                    p.rtt_ms.map_or("-".into(), |r| format!("{r:.2}ms"))
                );
            }
        }
        if !s.decisions.is_empty() {
            println!("placement decisions (latest last)");
            for d in &s.decisions {
                println!(
                    "  {:>8.1}s  {} ({}) -> {}: {}",
                    d.at_ms as f64 / 1000.0,
                    d.component,
                    d.policy.name(),
                    d.to,
                    d.reason
                );
            }
        }
        Ok(())
    }
}
