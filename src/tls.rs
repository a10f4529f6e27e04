//! TLS settings from PEM files: a rustls `ClientConfig` for vigil's MQTT
//! connections, a `ServerConfig` for the embedded broker's listener (ring
//! provider, no OpenSSL, so ARM cross builds stay simple).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ServerTlsFiles, TlsFiles};

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_file, "CA file")? {
        roots.add(cert).map_err(|e| {
            format!(
                "CA file {} holds an unusable certificate: {e}",
                ca_file.display()
            )
        })?;
    }
    Ok(roots)
}

fn key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{what} {} holds no usable PEM private key: {e}",
            path.display()
        )
    })
}

/// Build a client TLS configuration, with a message naming the file at fault.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = roots(&files.ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = certs(cert_file, "client certificate")?;
            let key = key(key_file, "client key")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "client certificate {} and key {} do not fit: {e}",
                    cert_file.display(),
                    key_file.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// Build the TLS configuration of a listener, with a message naming the
/// file at fault. With a client CA, clients must present a certificate it
/// signed; without, any client may connect (and sign in otherwise).
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca_file)?),
                provider,
            )
            .build()
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certs(&files.cert_file, "certificate")?;
    let key = key(&files.key_file, "key")?;
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certificate {} and key {} do not fit: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    Ok(Arc::new(config))
}
