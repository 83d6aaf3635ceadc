//! The node's data directory: identity, admin token, TLS certificate, modules by digest,
//! component snapshots, and `node.json` once the node is ready.
//!
//! ```text
//! DATA_DIR/identity.key        ed25519 key (libp2p protobuf encoding): the stable peer id
//! DATA_DIR/admin.token         bearer token of the control API (mode 0600)
//! DATA_DIR/tls/{cert,key}.der  self-signed certificate for HTTP/3
//! DATA_DIR/modules/HEX.wasm    original module bytes, by blake3 digest
//! DATA_DIR/modules/HEX.ENGINE-ARCH.cwasm  the same module compiled for this host (a cache;
//!                              on a --no-compile node, what `continuum compile` made for it)
//! DATA_DIR/components/NAME.snap  the latest checkpoint of each component
//! DATA_DIR/components/NAME.handoff  the hand-off that brought it here, if it migrated here
//! DATA_DIR/node.json           written when the node is ready, removed when it stops
//! ```

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a running node publishes about itself in `DATA_DIR/node.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub peer_id: String,
    /// Base URL of the HTTP/1.1 listener, e.g. `http://127.0.0.1:7070`.
    pub http: String,
    /// URL of the HTTP/3 listener (same port, over UDP), e.g. `https://127.0.0.1:7070`.
    pub h3: String,
    pub p2p: Vec<String>,
    /// SHA-256 of the node's certificate (hex): clients pin it instead of trusting a CA.
    pub cert_sha256: String,
}

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Open (creating if needed) a data directory.
    pub fn open(root: &Path) -> Result<DataDir> {
        let d = DataDir {
            root: root.to_path_buf(),
        };
        for dir in [d.root.clone(), d.modules(), d.components(), d.tls()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        restrict(&d.root, 0o700)?;
        Ok(d)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn modules(&self) -> PathBuf {
        self.root.join("modules")
    }
    pub fn components(&self) -> PathBuf {
        self.root.join("components")
    }
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    pub fn token(&self) -> PathBuf {
        token_path(&self.root)
    }
    pub fn node_json(&self) -> PathBuf {
        node_json_path(&self.root)
    }
    pub fn snapshot(&self, name: &str) -> PathBuf {
        self.components().join(format!("{name}.snap"))
    }
    /// The hand-off that brought component `name` here, as its previous host signed it.
    pub fn handoff(&self, name: &str) -> PathBuf {
        self.components().join(format!("{name}.handoff"))
    }

    /// The admin token, made on first use.
    pub fn load_or_create_token(&self) -> Result<String> {
        let path = self.token();
        if let Ok(t) = fs::read_to_string(&path) {
            let t = t.trim().to_string();
            if !t.is_empty() {
                return Ok(t);
            }
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        write_atomic(&path, token.as_bytes())?;
        restrict(&path, 0o600)?;
        Ok(token)
    }

    pub fn write_node_json(&self, info: &NodeInfo) -> Result<()> {
        write_atomic(&self.node_json(), &serde_json::to_vec_pretty(info)?)
    }

    pub fn remove_node_json(&self) {
        let _ = fs::remove_file(self.node_json());
    }
}

pub fn token_path(root: &Path) -> PathBuf {
    root.join("admin.token")
}

pub fn node_json_path(root: &Path) -> PathBuf {
    root.join("node.json")
}

/// Read `node.json` of the node that uses data directory `root`.
pub fn read_node_json(root: &Path) -> Result<NodeInfo> {
    let path = node_json_path(root);
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "reading {} (is a node running with this data dir?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Replace `path` with `bytes` so that a crash leaves either the old or the new file, never a
/// torn one: write a temporary file, fsync it, rename it over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes)).map(|_| ())
}

/// [`write_atomic`] of what `write` writes as it makes it (a large snapshot is never held
/// whole in memory); the bytes written.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<Pieces>) -> std::io::Result<()>,
) -> Result<u64> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(PIECE, Pieces(f));
    let len = write(&mut w)
        .and_then(|_| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|Pieces(f)| {
            f.sync_all()?;
            f.metadata().map(|m| m.len())
        })
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(len)
}

/// The most a file write hands the kernel at once.
const PIECE: usize = 64 << 10;

/// A file written at most [`PIECE`] bytes per system call. Why: a write runs to its end in the
/// kernel (copying into the page cache) and is not preempted meanwhile on kernels built
/// without preemption, so a 64 MiB snapshot written in one call held up every request thread
/// woken on that core for tens of milliseconds (BENCHMARKS.md, 2026-12-07).
pub struct Pieces(fs::File);

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(PIECE)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> Result<()> {
    Ok(())
}
