use super::ClientArgs;
use super::node::parse_label;
use crate::mesh::FederationStatus;
use crate::short_id;
use anyhow::Result;
use clap::{Args, Subcommand};
use http::Method;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct FederateArgs {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand, Debug)]
enum Op {
    /// Propose a federation; matching nodes join it.
    Create {
        #[arg(long)]
        name: String,
        /// How long it lives unless renewed, e.g. 60s.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        lease: Duration,
        /// Labels a member must carry (repeatable), e.g. zone=a.
        #[arg(long = "require", value_name = "KEY=VALUE", value_parser = parse_label)]
        require: Vec<(String, String)>,
        /// Members needed for it to count as formed.
        #[arg(long, default_value_t = 1)]
        min_members: u32,
        /// What it is for.
        #[arg(long, default_value = "")]
        objective: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Join a known federation.
    Join {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Leave a federation (an owner that leaves stops renewing it).
    Leave {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the federations this node knows.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl FederateArgs {
    pub async fn run(self) -> Result<()> {
        match self.op {
            Op::Create {
                name,
                lease,
                require,
                min_members,
                objective,
                client,
            } => {
                let body = serde_json::json!({
                    "name": name,
                    "objective": objective,
                    "require": require.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                    "min_members": min_members,
                    "lease_ms": lease.as_millis() as u64,
                });
                client
                    .api(
                        Method::POST,
                        "/v1/federations",
                        serde_json::to_vec(&body)?.into(),
                    )
                    .await?;
                if !client.json {
                    println!(
                        "proposed federation {name} (lease {})",
                        humantime::format_duration(lease)
                    );
                }
            }
            Op::Join { name, client } => {
                client
                    .api(
                        Method::POST,
                        &format!("/v1/federations/{name}/join"),
                        Default::default(),
                    )
                    .await?;
                if !client.json {
                    println!("joined {name}");
                }
            }
            Op::Leave { name, client } => {
                client
                    .api(
                        Method::POST,
                        &format!("/v1/federations/{name}/leave"),
                        Default::default(),
                    )
                    .await?;
                if !client.json {
                    println!("left {name}");
                }
            }
            Op::Ls { client } => {
                let list: Vec<FederationStatus> = client
                    .api_json(Method::GET, "/v1/federations", Default::default())
                    .await?;
                if client.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                println!(
                    "{:<16} {:<8} {:<16} {:>7} {:>6} {:<6} {:<6}",
                    "NAME", "OWNER", "REQUIRE", "MEMBERS", "FORMED", "MEMBER", "EXPIRES"
                );
                for f in list {
                    let require: Vec<String> =
                        f.require.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<16} {:<8} {:<16} {:>7} {:>6} {:<6} {:>5.1}s",
                        f.name,
                        short_id(&f.owner),
                        require.join(","),
                        f.members.len(),
                        f.formed,
                        f.member,
                        f.expires_in_ms as f64 / 1000.0
                    );
                }
            }
        }
        Ok(())
    }
}
