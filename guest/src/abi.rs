//! The byte encoding of requests, responses and call results between host and guest.
//!
//! Both sides link this file, so the encoding is written once. It is deliberately plain (length-
//! prefixed little-endian fields, no schema) because it runs on every call, inside the guest, and
//! must stay small there.
//!
//! ```text
//! request  = str method, str target (path and query), u32 n, n × (str name, bytes value), bytes body
//! response = u32 status, u32 n, n × (str name, bytes value), bytes body
//! result   = u32 0, response                     (ABI v2: the answer to a call)
//!          | u32 kind (1..=4), u32 status, str message     (a CallError, kind as CallError::kind)
//! str, bytes = u32 length, then that many bytes
//! ```

use crate::{CallError, Request, Response};
use std::fmt;

/// A message that does not decode; the host turns a guest's malformed response into a 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiError(pub &'static str);

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for AbiError {}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_headers(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        put(out, name.as_bytes());
        put(out, value);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, AbiError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(AbiError("message is truncated"))?;
        self.0 = rest;
        Ok(u32::from_le_bytes(*head))
    }
    fn bytes(&mut self) -> Result<&'a [u8], AbiError> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return Err(AbiError("a field runs past the end of the message"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    fn string(&mut self) -> Result<String, AbiError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| AbiError("a text field is not UTF-8"))
    }
    fn headers(&mut self) -> Result<Vec<(String, Vec<u8>)>, AbiError> {
        let n = self.u32()? as usize;
        // Each header takes at least 8 bytes: a count beyond that is a lie, not a reason to
        // reserve memory.
        if n > self.0.len() / 8 {
            return Err(AbiError("header count exceeds the message"));
        }
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            headers.push((self.string()?, self.bytes()?.to_vec()));
        }
        Ok(headers)
    }
    fn end(self) -> Result<(), AbiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AbiError("message has trailing bytes"))
        }
    }
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.target.len() + r.body.len());
    put(&mut out, r.method.as_bytes());
    put(&mut out, r.target.as_bytes());
    put_headers(&mut out, &r.headers);
    put(&mut out, &r.body);
    out
}

pub fn decode_request(b: &[u8]) -> Result<Request, AbiError> {
    let mut r = Reader(b);
    let req = Request {
        method: r.string()?,
        target: r.string()?,
        headers: r.headers()?,
        body: r.bytes()?.to_vec(),
    };
    r.end()?;
    Ok(req)
}

pub fn encode_response(r: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.body.len());
    out.extend_from_slice(&(r.status as u32).to_le_bytes());
    put_headers(&mut out, &r.headers);
    put(&mut out, &r.body);
    out
}

pub fn decode_response(b: &[u8]) -> Result<Response, AbiError> {
    let mut r = Reader(b);
    let status = r.u32()?;
    if !(100..=999).contains(&status) {
        return Err(AbiError("status code is out of range"));
    }
    let resp = Response {
        status: status as u16,
        headers: r.headers()?,
        body: r.bytes()?.to_vec(),
    };
    r.end()?;
    Ok(resp)
}

/// The answer to a call, as the host hands it to the guest (ABI v2).
pub fn encode_result(r: &Result<Response, CallError>) -> Vec<u8> {
    match r {
        Ok(resp) => {
            let mut out = 0u32.to_le_bytes().to_vec();
            out.extend_from_slice(&encode_response(resp));
            out
        }
        Err(e) => {
            let mut out = Vec::with_capacity(16 + e.message().len());
            out.extend_from_slice(&e.kind().to_le_bytes());
            out.extend_from_slice(&(e.status() as u32).to_le_bytes());
            put(&mut out, e.message().as_bytes());
            out
        }
    }
}

pub fn decode_result(b: &[u8]) -> Result<Result<Response, CallError>, AbiError> {
    let mut r = Reader(b);
    let kind = r.u32()?;
    if kind == 0 {
        return decode_response(r.0).map(Ok);
    }
    let status = r.u32()?;
    let message = r.string()?;
    r.end()?;
    let status = u16::try_from(status).map_err(|_| AbiError("status code is out of range"))?;
    CallError::from_parts(kind, status, message)
        .map(Err)
        .ok_or(AbiError("unknown call error kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_refusals() {
        let req = Request {
            method: "PUT".into(),
            target: "/k/a?x=1".into(),
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"value".to_vec(),
        };
        let bytes = encode_request(&req);
        assert_eq!(decode_request(&bytes).unwrap(), req);
        for cut in 0..bytes.len() {
            assert!(decode_request(&bytes[..cut]).is_err());
        }
        let resp = Response::text(201, "made").header("x-a", "b");
        assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        let mut bad = encode_response(&resp);
        bad[..4].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            decode_response(&bad),
            Err(AbiError("status code is out of range"))
        );
    }

    #[test]
    fn call_results_roundtrip() {
        let ok = Ok(Response::text(200, "7"));
        assert_eq!(decode_result(&encode_result(&ok)).unwrap(), ok);
        for e in [
            CallError::NotFound("no component named x".into()),
            CallError::Deadline("past 1s".into()),
            CallError::Loop("16 deep".into()),
            CallError::Refused(503, "overloaded".into()),
        ] {
            let bytes = encode_result(&Err(e.clone()));
            assert_eq!(decode_result(&bytes).unwrap(), Err(e));
            for cut in 0..bytes.len() {
                assert!(decode_result(&bytes[..cut]).is_err());
            }
        }
    }
}
