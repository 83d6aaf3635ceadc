use super::ClientArgs;
use crate::components::ComponentInfo;
use anyhow::{Context, Result};
use clap::Args;
use http::Method;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The component's name.
    name: String,
    /// The new version: a module whose `upgrade` takes over the running version's state.
    file: PathBuf,
    /// Version label of the new module (default: the running one plus one).
    #[arg(long)]
    version: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

impl UpdateArgs {
    pub async fn run(self) -> Result<()> {
        let wasm = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let mut target = format!("/v1/components/{}/update", self.name);
        if let Some(v) = &self.version {
            target.push_str(&format!("?version={}", super::query_value(v)));
        }
        let info: ComponentInfo = self
            .client
            .api_json(Method::PUT, &target, wasm.into())
            .await?;
        self.client.show(&info, || {
            format!(
                "updated {} to version {} (module {}) on {}",
                info.name,
                info.version,
                &info.digest[..12],
                info.host
            )
        })
    }
}
