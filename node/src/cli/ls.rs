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
        // CALLS: requests served; WAITING: requests in flight now (waiting on calls or timers);
        // OUT: calls it made to other components, OUT-WAITING: those still unanswered.
        println!(
            "{:<20} {:<8} {:>5} {:<12} {:<8} {:>10} {:>5} {:>9} {:>7} {:>9} {:>11}",
            "NAME",
            "HOST",
            "EPOCH",
            "DIGEST",
            "VERSION",
            "MEMORY",
            "CPU",
            "CALLS",
            "WAITING",
            "OUT",
            "OUT-WAITING"
        );
        for c in list {
            println!(
                "{:<20} {:<8} {:>5} {:<12} {:<8} {:>10} {:>5.2} {:>9} {:>7} {:>9} {:>11}",
                c.name,
                short_id(&c.host),
                c.epoch,
                &c.digest[..12],
                c.version,
                human_bytes(c.memory_bytes),
                c.cpu,
                c.calls,
                c.in_flight,
                c.calls_out,
                c.calls_out_in_flight
            );
        }
        Ok(())
    }
}
