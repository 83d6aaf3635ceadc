use super::{ClientArgs, human_bytes};
use crate::components::ComponentInfo;
use anyhow::{Context, Result};
use clap::Args;
use http::Method;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A file written by `continuum checkpoint`.
    file: PathBuf,
    /// Name to restore it under (default: the name in the snapshot).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

impl RestoreArgs {
    pub async fn run(self) -> Result<()> {
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let target = match &self.name {
            Some(n) => {
                crate::components::check_name(n).map_err(|e| anyhow::anyhow!("{e}"))?;
                format!("/v1/restore?name={n}")
            }
            None => "/v1/restore".to_string(),
        };
        let info: ComponentInfo = self
            .client
            .api_json(Method::POST, &target, bytes.into())
            .await?;
        self.client.show(&info, || {
            format!(
                "restored {} ({} of memory) on {}",
                info.name,
                human_bytes(info.memory_bytes),
                info.host
            )
        })
    }
}
