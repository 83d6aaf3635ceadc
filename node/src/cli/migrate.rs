use super::{ClientArgs, human_bytes};
use crate::migration::Progress;
use anyhow::{Result, bail};
use clap::Args;
use http::Method;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The component's name.
    name: String,
    /// The peer to move it to, or `auto`: the least loaded peer that can take it.
    #[arg(long, value_name = "PEER_ID|auto")]
    to: String,
    /// Freeze at once and send the whole state in one go (no pre-copy rounds): the least
    /// traffic, the longest pause.
    #[arg(long)]
    stop_and_copy: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// The longest the command follows a migration before giving up on watching it.
const WATCH_LIMIT: Duration = Duration::from_secs(600);

impl MigrateArgs {
    pub async fn run(self) -> Result<()> {
        let body = serde_json::json!({ "to": self.to, "stop_and_copy": self.stop_and_copy });
        let mut p: Progress = self
            .client
            .api_json(
                Method::POST,
                &format!("/v1/components/{}/migrate", self.name),
                serde_json::to_vec(&body)?.into(),
            )
            .await?;
        let quiet = self.client.json;
        if !quiet {
            println!("migrating {} to {} (migration {})", p.name, p.to, p.id);
        }
        let (mut shown_rounds, mut shown_step) = (0, String::new());
        let started = Instant::now();
        loop {
            if !quiet {
                for r in &p.rounds[shown_rounds..] {
                    println!(
                        "  round {}: {} dirty pages, {}",
                        r.round,
                        r.pages,
                        human_bytes(r.bytes)
                    );
                }
                shown_rounds = p.rounds.len();
                if p.step != shown_step && !p.step.starts_with("round") {
                    println!("  {}", p.step);
                }
                shown_step = p.step.clone();
            }
            if p.finished {
                break;
            }
            if started.elapsed() > WATCH_LIMIT {
                bail!(
                    "migration {} still running after {WATCH_LIMIT:?}; follow it with GET /v1/migrations/{}",
                    p.id,
                    p.id
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            p = self
                .client
                .api_json(
                    Method::GET,
                    &format!("/v1/migrations/{}", p.id),
                    Default::default(),
                )
                .await?;
        }
        if quiet {
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        match (&p.report, &p.error) {
            (Some(r), _) => {
                if !quiet {
                    println!(
                        "migrated {} to {}: {} round(s), {} pre-copied, {} after the freeze{}; downtime {} ms, total {} ms, epoch {}",
                        p.name,
                        p.to,
                        r.rounds,
                        human_bytes(r.precopy_bytes),
                        human_bytes(r.final_bytes),
                        if r.module_sent { ", module sent" } else { "" },
                        r.downtime_ms,
                        r.total_ms,
                        r.epoch
                    );
                }
                Ok(())
            }
            (None, Some(e)) if p.step == "aborted" => {
                bail!(
                    "migration of {} aborted, it goes on where it was: {e}",
                    p.name
                )
            }
            (None, e) => {
                eprintln!(
                    "warning: {} moved to {}, but the target did not confirm: {}",
                    p.name,
                    p.to,
                    e.as_deref().unwrap_or("no report")
                );
                Ok(())
            }
        }
    }
}
