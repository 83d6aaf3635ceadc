//! The node's ed25519 identity, kept in the data directory so that its peer id survives
//! restarts (the mesh knows a node by it).

use crate::datadir::{DataDir, write_atomic};
use anyhow::{Context, Result};
use libp2p_identity::Keypair;

pub fn load_or_create(dir: &DataDir) -> Result<Keypair> {
    let path = dir.identity();
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a valid identity key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding the new identity key")?;
            write_atomic(&path, &bytes)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
