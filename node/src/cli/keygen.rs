use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the new swarm key (refuses to overwrite).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

impl KeygenArgs {
    pub async fn run(self) -> Result<()> {
        if self.output.exists() {
            bail!(
                "{} exists already; remove it first if you mean to replace the key",
                self.output.display()
            );
        }
        let key: [u8; 32] = rand::random();
        let text = format!(
            "# continuum swarm key: nodes started with the same --swarm-key form one swarm.\n# Keep it secret.\n{}\n",
            hex::encode(key)
        );
        crate::datadir::write_atomic(&self.output, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.output, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", self.output.display()))?;
        }
        let parsed = continuum_gossip::SwarmKey::parse(&text).map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "wrote swarm key {} to {}",
            parsed.fingerprint(),
            self.output.display()
        );
        Ok(())
    }
}
