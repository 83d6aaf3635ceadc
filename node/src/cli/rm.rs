use super::ClientArgs;
use anyhow::Result;
use clap::Args;
use http::Method;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The component's name.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

impl RmArgs {
    pub async fn run(self) -> Result<()> {
        self.client
            .api(
                Method::DELETE,
                &format!("/v1/components/{}", self.name),
                Default::default(),
            )
            .await?;
        if !self.client.json {
            println!("removed {}", self.name);
        }
        Ok(())
    }
}
