//! Certificates for TLS tests, made with rcgen: a CA, a server certificate
//! for localhost / 127.0.0.1 and a client certificate signed by it; an
//! unrelated second CA, and a client certificate signed by that one.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Broker, BrokerTls};

fn params(common_name: &str, sans: &[&str]) -> CertificateParams {
    // `CertificateParams::new` turns "127.0.0.1" into an IP address SAN.
    let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut p = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vigil tests");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p
}

/// A self-signed CA: its issuer (to sign with) and its certificate as PEM.
fn make_ca(common_name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut p = params(common_name, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (Issuer::new(p, key), cert.pem())
}

/// A leaf certificate signed by `issuer`: (certificate PEM, private key PEM).
fn leaf(
    common_name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let mut p = params(common_name, sans);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    (
        p.signed_by(&key, issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

/// Every PEM file of a test, in one temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The unrelated CA's certificate.
    pub other_ca: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            fs::write(&p, text).unwrap();
            p
        };
        let (ca, ca_pem) = make_ca("vigil test CA");
        let (other, other_pem) = make_ca("unrelated CA");
        let server = leaf(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let client = leaf("gw-test", &[], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let stranger = leaf("gw-test", &[], ExtendedKeyUsagePurpose::ClientAuth, &other);
        write("stranger.pem", &stranger.0);
        write("stranger.key", &stranger.1);
        let pki = Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server.0),
            server_key: write("server.key", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client.key", &client.1),
            other_ca: write("other-ca.pem", &other_pem),
            dir,
        };
        // Mosquitto may drop root privileges before it reads the files.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(pki.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for e in fs::read_dir(pki.dir.path()).unwrap() {
            fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
        }
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The broker's TLS listener settings.
    pub fn broker_tls(&self, require_client_cert: bool) -> BrokerTls {
        BrokerTls {
            ca: self.ca.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            require_client_cert,
        }
    }

    /// A broker with a TLS listener besides its plain one.
    pub fn broker(&self, require_client_cert: bool) -> Broker {
        Broker::start_with(Some(self.broker_tls(require_client_cert)))
    }

    pub fn client(&self) -> Option<(&Path, &Path)> {
        Some((&self.client_cert, &self.client_key))
    }

    /// The `[section]` table (e.g. "upstream.tls") with the CA and the
    /// client certificate `who` ("client", or "stranger" for the one the
    /// unrelated CA signed).
    pub fn table(&self, section: &str, who: &str) -> String {
        let s = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        format!(
            "[{section}]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
            s(&self.ca),
            s(&self.path(&format!("{who}.pem"))),
            s(&self.path(&format!("{who}.key")))
        )
    }
}
