//! TLS for HTTP/3 and for the direct connections of migrations (TCP, `migration/direct.rs`): a
//! self-signed certificate per node (made with rcgen, kept in the data dir), and a client
//! verifier that pins the certificate's SHA-256 (published in `node.json`, or sent over the
//! mesh) instead of trusting a certificate authority: a mesh of edge boxes has no CA and no DNS
//! names.

use crate::datadir::{DataDir, write_atomic};
use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

pub const ALPN_H3: &[u8] = b"h3";

pub struct NodeCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub sha256: [u8; 32],
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's certificate, made on first start.
pub fn load_or_create(dir: &DataDir) -> Result<NodeCert> {
    let (cert_path, key_path) = (dir.tls().join("cert.der"), dir.tls().join("key.der"));
    let (cert, key) = match (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        (Ok(c), Ok(k)) => (c, k),
        _ => {
            let names = ["localhost", "continuum", "127.0.0.1", "::1"].map(String::from);
            let made = rcgen::generate_simple_self_signed(names.to_vec())
                .context("making the node's TLS certificate")?;
            let (c, k) = (made.cert.der().to_vec(), made.signing_key.serialize_der());
            write_atomic(&key_path, &k)?;
            write_atomic(&cert_path, &c)?;
            (c, k)
        }
    };
    Ok(NodeCert {
        sha256: Sha256::digest(&cert).into(),
        cert: CertificateDer::from(cert),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    })
}

/// QUIC server configuration for HTTP/3.
pub fn server_config(cert: &NodeCert) -> Result<quinn::ServerConfig> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_server(cert, ALPN_H3)?)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// QUIC client configuration that accepts exactly the certificate whose SHA-256 is `pin`.
pub fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_client(pin, ALPN_H3)?)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// TLS 1.3 server configuration with the node's certificate, for clients that offer `alpn`.
pub fn rustls_server(cert: &NodeCert, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], cert.key.clone_key())
        .context("loading the node's certificate")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    Ok(Arc::new(tls))
}

/// TLS 1.3 client configuration that accepts exactly the certificate whose SHA-256 is `pin`,
/// offering `alpn`.
pub fn rustls_client(pin: [u8; 32], alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert { pin, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(tls))
}

/// Parse a pin given as 64 hex digits.
pub fn parse_pin(hex_pin: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_pin.trim()).context("certificate pin is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("certificate pin must be 32 bytes (64 hex digits)"))
}

#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the node's certificate (sha256 {}) is not the pinned one ({})",
                hex::encode(got),
                hex::encode(self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("a node speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
