use super::{ClientArgs, human_bytes};
use crate::node::Status;
use anyhow::Result;
use clap::Args;
use http::Method;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
}

impl StatusArgs {
    pub async fn run(self) -> Result<()> {
        let reply = self
            .client
            .api(Method::GET, "/v1/status", Default::default())
            .await?;
        if self.client.json {
            println!("{}", reply.text().trim_end());
            return Ok(());
        }
        let s: Status = serde_json::from_slice(&reply.body)?;
        println!("peer id     {}", s.peer_id);
        println!("version     {} ({})", s.version, s.arch);
        println!("http        {}", s.http);
        println!("h3          {}", s.h3);
        println!("uptime      {} s", s.uptime_s);
        println!(
            "components  {} ({} of memory)",
            s.components,
            human_bytes(s.memory_bytes)
        );
        println!("peers       {}", s.peers.len());
        println!("federations {}", s.federations.len());
        Ok(())
    }
}
