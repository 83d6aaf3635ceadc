use super::{ClientArgs, human_bytes};
use crate::components::ComponentInfo;
use anyhow::{Context, Result};
use clap::Args;
use continuum_gossip::Policy;
use http::Method;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The component: a wasm32-wasip1 module built with continuum-guest.
    file: PathBuf,
    /// Name to reach it by (/c/NAME/); default: the file name without extension.
    #[arg(long)]
    name: Option<String>,
    /// A version label for the component.
    #[arg(long, default_value = "1")]
    version: String,
    /// Place it on this peer of the mesh instead of the node the command talks to.
    #[arg(long, value_name = "PEER_ID")]
    on: Option<String>,
    /// Bind it to a federation: it only ever runs on (and moves among) its members.
    #[arg(long, value_name = "F")]
    federation: Option<String>,
    /// A label every host must carry (repeatable), e.g. sensor=camera.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = super::node::parse_label)]
    require: Vec<(String, String)>,
    /// How it chooses where to run: pinned (stays), follow-traffic (moves toward where its
    /// requests enter the mesh), balance (moves off an overloaded node).
    #[arg(long, default_value = "pinned", value_parser = parse_policy)]
    policy: Policy,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse()
}

impl DeployArgs {
    pub async fn run(self) -> Result<()> {
        let wasm = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let name = match self.name {
            Some(n) => n,
            None => self
                .file
                .file_stem()
                .and_then(|s| s.to_str())
                .context("cannot take a name from the file name; pass --name")?
                .to_string(),
        };
        crate::components::check_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
        let version = super::query_value(&self.version);
        let mut target = format!("/v1/components/{name}?version={version}");
        if let Some(peer) = &self.on {
            target.push_str(&format!("&on={peer}"));
        }
        if self.policy != Policy::Pinned {
            target.push_str(&format!("&policy={}", self.policy.name()));
        }
        if let Some(f) = &self.federation {
            target.push_str(&format!("&federation={}", super::query_value(f)));
        }
        for (k, v) in &self.require {
            target.push_str(&format!(
                "&require={}={}",
                super::query_value(k),
                super::query_value(v)
            ));
        }
        let info: ComponentInfo = self
            .client
            .api_json(Method::PUT, &target, wasm.into())
            .await?;
        self.client.show(&info, || {
            format!(
                "deployed {} (module {}, {}) on {}",
                info.name,
                &info.digest[..12],
                human_bytes(info.module_bytes),
                info.host
            )
        })
    }
}
