use super::{ClientArgs, human_bytes};
use crate::datadir::write_atomic;
use anyhow::Result;
use clap::Args;
use http::Method;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// The component's name.
    name: String,
    /// Where to write the snapshot (it carries the module too, so it restores anywhere).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

impl CheckpointArgs {
    pub async fn run(self) -> Result<()> {
        let target = format!("/v1/components/{}/checkpoint?module=true", self.name);
        let reply = self
            .client
            .api(Method::POST, &target, Default::default())
            .await?;
        write_atomic(&self.output, &reply.body)?;
        if self.client.json {
            println!(
                "{}",
                serde_json::json!({"name": self.name, "file": self.output, "bytes": reply.body.len()})
            );
        } else {
            println!(
                "checkpointed {} to {} ({})",
                self.name,
                self.output.display(),
                human_bytes(reply.body.len() as u64)
            );
        }
        Ok(())
    }
}
