use super::{ClientArgs, human_bytes};
use crate::components::ComponentInfo;
use crate::short_id;
use anyhow::Result;
use clap::Args;
use http::Method;

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
}

impl LsArgs {
    pub async fn run(self) -> Result<()> {
        let list: Vec<ComponentInfo> = self
            .client
            .api_json(Method::GET, "/v1/components", Default::default())
            .await?;
        if self.client.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        println!(
            "{:<20} {:<8} {:>5} {:<12} {:<8} {:>10} {:>9}",
            "NAME", "HOST", "EPOCH", "DIGEST", "VERSION", "MEMORY", "CALLS"
        );
        for c in list {
            println!(
                "{:<20} {:<8} {:>5} {:<12} {:<8} {:>10} {:>9}",
                c.name,
                short_id(&c.host),
                c.epoch,
                &c.digest[..12],
                c.version,
                human_bytes(c.memory_bytes),
                c.calls
            );
        }
        Ok(())
    }
}
