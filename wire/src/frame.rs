//! The call lane's framing: `len: u32` (big-endian, what follows), `id: u64`, a flag byte (1:
//! a 32-byte swarm-key tag follows), then the CBOR body, the same sealed envelope
//! request-response carries. Every length is bounded before anything is buffered.

use crate::rpc::Envelope;
use futures::AsyncReadExt;

/// Why a frame was refused (a metrics reason each).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame")]
    Malformed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            FrameError::TooLarge(_) => Some("lane_frame_too_large"),
            FrameError::Malformed => Some("lane_malformed_frame"),
            FrameError::Io(_) => None,
        }
    }
}

/// A frame, as it goes on the stream.
pub fn encode(id: u64, env: &Envelope) -> Vec<u8> {
    let (body, mac) = env.parts();
    let len = 8 + 1 + mac.map_or(0, |m| m.len()) + body.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    match mac {
        Some(m) => {
            out.push(1);
            out.extend_from_slice(m);
        }
        None => out.push(0),
    }
    out.extend_from_slice(body);
    out
}

/// The next frame (at most `max` bytes), or `None` at a clean end of the stream.
pub async fn read_frame<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<(u64, Envelope)>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if len < 9 {
        return Err(FrameError::Malformed);
    }
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let id = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
    let (mac, rest) = match head[8] {
        0 => (None, len - 9),
        1 if len >= 9 + 32 => {
            let mut mac = [0u8; 32];
            r.read_exact(&mut mac).await?;
            (Some(mac), len - 9 - 32)
        }
        _ => return Err(FrameError::Malformed),
    };
    // Grown as the bytes arrive, not allocated on the peer's word.
    let mut body = Vec::with_capacity(rest.min(64 << 10));
    r.take(rest as u64).read_to_end(&mut body).await?;
    if body.len() < rest {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some((id, Envelope::from_parts(body, mac))))
}
