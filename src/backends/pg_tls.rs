//! Encryption in transit to PostgreSQL: the `sslmode` and CA bundle of an
//! admin connection, laid over what its URL says, and how a failed TLS
//! handshake is reported.
//!
//! Where each comes from, first match wins:
//! - `sslmode`: the explicit setting (a class's `spec.postgres.sslMode`, or
//!   `--database-ssl-mode` for the flags' server), the URL's `sslmode`, the
//!   fallback (`--database-ssl-mode` for a class's server), `PGSSLMODE`,
//!   `prefer`;
//! - CA bundle: the explicit one (`spec.postgres.caSecretRef`,
//!   `--database-ca-file`), the URL's `sslrootcert`, the fallback
//!   (`--database-ca-file` for a class's server), `PGSSLROOTCERT`.
//!
//! The bundle is read and checked here (certificates only, at least one)
//! and handed to the driver as PEM, so a bad file is a clear configuration
//! error at start, never a connection error later. A bundle that tenantry
//! was given explicitly (or in the URL) with a mode that does not check
//! certificates is refused: the driver would ignore it, and whoever set it
//! would believe the server is verified. The driver (sqlx with rustls) trusts
//! the bundle *in addition to* the Mozilla roots it ships.
//!
//! With `require`, `verify-ca` and `verify-full` the driver never falls back
//! to plaintext: a server (or something on the way) that answers the TLS
//! request with "no" is refused.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject, SectionKind};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::api::SslMode;

/// Where a CA bundle comes from, before it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A file (`--database-ca-file`).
    File(PathBuf),
    /// PEM read elsewhere (a class's Secret); `origin` names it in errors.
    Pem { origin: String, pem: Vec<u8> },
}

impl CaSource {
    fn load(&self) -> Result<CaBundle, String> {
        match self {
            Self::File(path) => {
                CaBundle::from_file(path, &format!("--database-ca-file {}", path.display()))
            }
            Self::Pem { origin, pem } => CaBundle::from_pem(pem, origin),
        }
    }
}

/// A checked CA bundle: the certificates alone, PEM-encoded again (so
/// nothing else that sat in the file, a stray key say, ever reaches a
/// tenant's Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// What it was read from, for messages.
    pub origin: String,
    pem: String,
    count: usize,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .field("certificates", &self.count)
            .finish()
    }
}

impl CaBundle {
    pub fn from_file(path: &Path, origin: &str) -> Result<Self, String> {
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read the CA bundle {origin}: {e}"))?;
        Self::from_pem(&data, origin)
    }

    /// Checks `data`: PEM with at least one certificate, each usable as a
    /// trust anchor, and no private key.
    pub fn from_pem(data: &[u8], origin: &str) -> Result<Self, String> {
        // Any kind of key (PKCS#1, PKCS#8, SEC1, encrypted): a mistake that
        // must not travel on to tenants' Secrets.
        if data.windows(16).any(|w| w == b"PRIVATE KEY-----") {
            return Err(format!(
                "the CA bundle {origin} holds a private key; it must hold CA certificates only (the key belongs on the server alone)"
            ));
        }
        let mut pem_out = String::new();
        let mut count = 0;
        for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data) {
            let (kind, der) =
                section.map_err(|e| format!("the CA bundle {origin} is not valid PEM: {e}"))?;
            // CRLs and the like: not for trust, left out.
            if kind != SectionKind::Certificate {
                continue;
            }
            let cert = CertificateDer::from(der);
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| {
                    format!(
                        "certificate {} of the CA bundle {origin} cannot be used as a CA: {e}",
                        count + 1
                    )
                })?;
            pem_out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in b64.as_bytes().chunks(64) {
                pem_out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
                pem_out.push('\n');
            }
            pem_out.push_str("-----END CERTIFICATE-----\n");
            count += 1;
        }
        if count == 0 {
            return Err(format!(
                "the CA bundle {origin} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        Ok(Self {
            origin: origin.to_string(),
            pem: pem_out,
            count,
        })
    }

    /// The certificates, PEM-encoded.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The TLS settings of one PostgreSQL server, before they meet its URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseTls {
    /// Wins over the URL's `sslmode`.
    pub ssl_mode: Option<SslMode>,
    /// Wins over the URL's `sslrootcert`.
    pub ca: Option<CaSource>,
    /// Used when neither `ssl_mode` nor the URL says.
    pub fallback_ssl_mode: Option<SslMode>,
    /// Used when neither `ca` nor the URL says.
    pub fallback_ca: Option<CaSource>,
}

/// What a connection to the server uses: the mode, and the CA bundle when
/// the mode checks certificates.
#[derive(Clone, Debug)]
pub struct EffectiveTls {
    pub mode: PgSslMode,
    pub ca: Option<CaBundle>,
}

impl PartialEq for EffectiveTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode_name() == other.mode_name() && self.ca == other.ca
    }
}

impl Eq for EffectiveTls {}

impl Default for EffectiveTls {
    fn default() -> Self {
        Self {
            mode: PgSslMode::Prefer,
            ca: None,
        }
    }
}

impl EffectiveTls {
    /// libpq's name of the mode, as written into tenants' URLs.
    pub fn mode_name(&self) -> &'static str {
        mode_name(self.mode)
    }

    /// Lays these settings over connect options parsed from the same URL.
    pub fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.ssl_mode(self.mode);
        match &self.ca {
            Some(ca) => options.ssl_root_cert_from_pem(ca.pem().as_bytes().to_vec()),
            None => options,
        }
    }
}

/// libpq's name of a mode.
pub fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

fn to_pg(mode: SslMode) -> PgSslMode {
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    }
}

fn verifies(mode: PgSslMode) -> bool {
    matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
}

impl DatabaseTls {
    /// Decides the mode and CA bundle of a connection to `url`, reading and
    /// checking the bundle. The error says what to change.
    pub fn resolve(&self, url: &str) -> Result<EffectiveTls, String> {
        let env = std::env::var_os("PGSSLROOTCERT").map(|v| v.to_string_lossy().into_owned());
        self.resolve_in(url, env)
    }

    /// [`Self::resolve`] with `PGSSLROOTCERT` given.
    fn resolve_in(&self, url: &str, pgsslrootcert: Option<String>) -> Result<EffectiveTls, String> {
        const INVALID_URL: &str = "the admin database URL is not a valid PostgreSQL URL";
        let parsed = url::Url::parse(url).map_err(|_| INVALID_URL.to_string())?;
        // The driver's reading of the URL: its sslmode, else PGSSLMODE, else prefer.
        let driver: PgConnectOptions = url.parse().map_err(|_| INVALID_URL.to_string())?;
        let query = |keys: &[&str]| {
            parsed
                .query_pairs()
                .filter(|(k, _)| keys.contains(&k.as_ref()))
                .map(|(_, v)| v.into_owned())
                .last()
        };
        let url_says_mode = query(&["sslmode", "ssl-mode"]).is_some();
        let url_root_cert = query(&["sslrootcert", "ssl-root-cert", "ssl-ca"]);

        let (mode, mode_origin) = match (self.ssl_mode, url_says_mode, self.fallback_ssl_mode) {
            (Some(mode), _, _) => (to_pg(mode), "the explicit setting"),
            (None, true, _) => (driver.get_ssl_mode(), "the URL's sslmode"),
            (None, false, Some(mode)) => (to_pg(mode), "--database-ssl-mode"),
            (None, false, None) => (driver.get_ssl_mode(), "the default"),
        };

        // (bundle, whether tenantry was told about it rather than finding it in the environment)
        let (ca, told) = if let Some(source) = &self.ca {
            (Some(source.load()?), true)
        } else if let Some(path) = url_root_cert {
            if path == "system" {
                return Err(
                    "sslrootcert=system is not supported: leave sslrootcert out to trust the Mozilla roots built into tenantry, or name a CA bundle file"
                        .to_string(),
                );
            }
            let origin = format!("sslrootcert={path} of the admin URL");
            (Some(CaBundle::from_file(Path::new(&path), &origin)?), true)
        } else if let Some(source) = &self.fallback_ca {
            (Some(source.load()?), true)
        } else if let Some(value) = pgsslrootcert {
            let bundle = if value.trim_start().starts_with("-----BEGIN") {
                CaBundle::from_pem(value.as_bytes(), "PGSSLROOTCERT")?
            } else {
                CaBundle::from_file(Path::new(&value), &format!("PGSSLROOTCERT={value}"))?
            };
            (Some(bundle), false)
        } else {
            (None, false)
        };

        let ca = match ca {
            Some(bundle) if !verifies(mode) && told => {
                return Err(format!(
                    "a CA bundle is configured ({}) but sslmode={} (from {mode_origin}) does not check the server's certificate, so the bundle would be ignored; use sslmode verify-full (or verify-ca), or leave the bundle out",
                    bundle.origin,
                    mode_name(mode)
                ));
            }
            // A bundle from the environment alone is libpq's default file:
            // unused unless the mode verifies, as in libpq.
            Some(_) if !verifies(mode) => None,
            ca => ca,
        };
        Ok(EffectiveTls { mode, ca })
    }
}

/// Describes a TLS failure of a connection (an untrusted or misnamed
/// certificate, a server that refuses TLS), or `None` when `err` is not one.
/// These are permanent: trying again meets the same certificate.
pub fn tls_failure(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Tls(inner) => {
            let text = inner.to_string();
            if text.contains("server does not support TLS") {
                return Some(
                    "the server did not accept TLS (it has ssl=off, or something between answered for it), and this sslmode never falls back to plaintext"
                        .to_string(),
                );
            }
            Some(match inner.downcast_ref::<rustls::Error>() {
                Some(e) => describe_rustls(e),
                None => format!("TLS could not be set up: {text}"),
            })
        }
        sqlx::Error::Io(io) => {
            let inner = io.get_ref()?;
            inner.downcast_ref::<rustls::Error>().map(describe_rustls)
        }
        _ => None,
    }
}

fn describe_rustls(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "certificate verification failed: the server's certificate is not signed by a trusted CA (unknown issuer); give the CA bundle that signed it (--database-ca-file, spec.postgres.caSecretRef or the URL's sslrootcert)".to_string(),
        rustls::Error::InvalidCertificate(e @ (C::NotValidForName | C::NotValidForNameContext { .. })) => format!("certificate verification failed: the server's certificate does not name the host connected to ({e}); connect by a name the certificate holds, or fix the certificate"),
        rustls::Error::InvalidCertificate(e) => format!("certificate verification failed: {e}"),
        e => format!("the TLS handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two self-signed CAs made with openssl for these tests (their keys
    // were thrown away).
    const CA1: &str = "-----BEGIN CERTIFICATE-----\nMIIBoDCCAUegAwIBAgIUQzyzcU5yxiqWq+5nrvucb+rpoNIwCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwSdGVuYW50cnktdW5pdC1jYS0xMCAXDTI2MTIwMTIzMDU1OFoY\nDzIxMjYxMTA3MjMwNTU4WjAdMRswGQYDVQQDDBJ0ZW5hbnRyeS11bml0LWNhLTEw\nWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATWkVi93oBU6YFq/lrq7CHft/bHBqLO\n09B7lmoR/Tr5+rqMgBMZkwkcHsaip1wj4jD7bfKrHtYstLj+Zv8TX6mHo2MwYTAd\nBgNVHQ4EFgQUmxKwzTpvZRIkeuA41BEznDVSD6IwHwYDVR0jBBgwFoAUmxKwzTpv\nZRIkeuA41BEznDVSD6IwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw\nCgYIKoZIzj0EAwIDRwAwRAIgMKxduFXny7yN8GRDVHHkwg1oj/eItC/MoCB95Chc\ncFMCIByx70Q2lZK8D5EbuTYGjsoOA1eJA0yKplFwnc2JJRqw\n-----END CERTIFICATE-----\n";
    const CA2: &str = "-----BEGIN CERTIFICATE-----\nMIIBkDCCATegAwIBAgIUIXxJeUAKHqRrusxmuwMO6qOaG00wCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwSdGVuYW50cnktdW5pdC1jYS0yMCAXDTI2MTIwMTIzMDU1OFoY\nDzIxMjYxMTA3MjMwNTU4WjAdMRswGQYDVQQDDBJ0ZW5hbnRyeS11bml0LWNhLTIw\nWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATILRS0uYSk9b/lRkBsbkmdO+TdiSlQ\n9sgBCwgOgXdHrNRbD9QnkLzSK0M4X1dtAmsnfo3HaysSJFh4v5WbBscUo1MwUTAd\nBgNVHQ4EFgQUGXqQqaYx8Wl17fc+DsS9TdxWUAswHwYDVR0jBBgwFoAUGXqQqaYx\n8Wl17fc+DsS9TdxWUAswDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBE\nAiBCniNbx1eqMF4EwEuLpcW9kCBlhP3fbA4y0JgmZ5IdEAIgYhMPq+iLUsS4/Ph7\ncinAAiVul25RoJVdOSMXLPpe43k=\n-----END CERTIFICATE-----\n";
    const URL: &str = "postgres://admin:pw@db.example:5432/app";

    fn pem(origin: &str, pem: &str) -> CaSource {
        CaSource::Pem {
            origin: origin.to_string(),
            pem: pem.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_bundle_keeps_its_certificates_and_nothing_else() {
        let data = format!("# the RDS bundle, say\n{CA1}\n{CA2}");
        let bundle = CaBundle::from_pem(data.as_bytes(), "test").unwrap();
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle.pem(), format!("{CA1}{CA2}"));
        assert!(!format!("{bundle:?}").contains("BEGIN"));
    }

    #[test]
    fn a_bundle_without_certificates_or_with_a_key_is_refused() {
        let err = CaBundle::from_pem(b"hello", "Secret ns/ca key ca.crt").unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        assert!(err.contains("Secret ns/ca key ca.crt"), "{err}");
        let with_key = format!(
            "{CA1}-----BEGIN PRIVATE KEY-----\nbm90IGEgcmVhbCBrZXk=\n-----END PRIVATE KEY-----\n"
        );
        let err = CaBundle::from_pem(with_key.as_bytes(), "f").unwrap_err();
        assert!(err.contains("holds a private key"), "{err}");
        let broken =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let err = CaBundle::from_pem(broken.as_bytes(), "f").unwrap_err();
        assert!(err.contains("cannot be used as a CA"), "{err}");
        let err = CaBundle::from_file(
            Path::new("/nonexistent/ca.crt"),
            "--database-ca-file /nonexistent/ca.crt",
        )
        .unwrap_err();
        assert!(
            err.contains("cannot read the CA bundle --database-ca-file /nonexistent/ca.crt"),
            "{err}"
        );
    }

    #[test]
    fn the_explicit_mode_wins_over_the_url_and_the_url_over_the_fallback() {
        let tls = DatabaseTls {
            ssl_mode: Some(SslMode::Require),
            fallback_ssl_mode: Some(SslMode::VerifyFull),
            ..Default::default()
        };
        let url = format!("{URL}?sslmode=disable");
        assert_eq!(tls.resolve_in(&url, None).unwrap().mode_name(), "require");
        let tls = DatabaseTls {
            fallback_ssl_mode: Some(SslMode::VerifyFull),
            ..Default::default()
        };
        assert_eq!(tls.resolve_in(&url, None).unwrap().mode_name(), "disable");
        assert_eq!(
            tls.resolve_in(URL, None).unwrap().mode_name(),
            "verify-full"
        );
        assert_eq!(
            DatabaseTls::default().resolve_in(URL, None).unwrap(),
            EffectiveTls {
                mode: PgSslMode::Prefer,
                ca: None
            }
        );
    }

    #[test]
    fn the_explicit_bundle_wins_over_the_urls_and_the_environments() {
        let tls = DatabaseTls {
            ssl_mode: Some(SslMode::VerifyFull),
            ca: Some(pem("explicit", CA1)),
            fallback_ca: Some(pem("fallback", CA2)),
            ..Default::default()
        };
        // The URL's file does not exist: it is not even read.
        let url = format!("{URL}?sslrootcert=/nonexistent/ca.crt");
        let got = tls.resolve_in(&url, Some(CA2.to_string())).unwrap();
        assert_eq!(got.ca.unwrap().origin, "explicit");
        let tls = DatabaseTls { ca: None, ..tls };
        let err = tls.resolve_in(&url, None).unwrap_err();
        assert!(
            err.contains("sslrootcert=/nonexistent/ca.crt of the admin URL"),
            "{err}"
        );
        let got = tls.resolve_in(URL, Some(CA1.to_string())).unwrap();
        assert_eq!(got.ca.unwrap().origin, "fallback");
        let tls = DatabaseTls {
            fallback_ca: None,
            ..tls
        };
        let got = tls.resolve_in(URL, Some(CA1.to_string())).unwrap();
        assert_eq!(got.ca.unwrap().origin, "PGSSLROOTCERT");
    }

    #[test]
    fn a_bundle_with_a_mode_that_does_not_verify_is_refused_unless_it_is_the_environments() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            let tls = DatabaseTls {
                ssl_mode: Some(mode),
                ca: Some(pem("--database-ca-file /etc/rds.pem", CA1)),
                ..Default::default()
            };
            let err = tls.resolve_in(URL, None).unwrap_err();
            assert!(err.contains("--database-ca-file /etc/rds.pem"), "{err}");
            assert!(err.contains(&format!("sslmode={mode}")), "{err}");
            assert!(err.contains("verify-full"), "{err}");
        }
        // libpq reads PGSSLROOTCERT only when the mode verifies; so does tenantry.
        let got = DatabaseTls::default()
            .resolve_in(URL, Some(CA1.to_string()))
            .unwrap();
        assert_eq!(
            got,
            EffectiveTls {
                mode: PgSslMode::Prefer,
                ca: None
            }
        );
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let tls = DatabaseTls {
                ssl_mode: Some(mode),
                ca: Some(pem("x", CA1)),
                ..Default::default()
            };
            let got = tls.resolve_in(URL, None).unwrap();
            assert_eq!(got.ca.unwrap().len(), 1);
        }
    }

    #[test]
    fn sslrootcert_system_and_bad_urls_are_explained() {
        let err = DatabaseTls::default()
            .resolve_in(
                &format!("{URL}?sslmode=verify-full&sslrootcert=system"),
                None,
            )
            .unwrap_err();
        assert!(err.contains("sslrootcert=system is not supported"), "{err}");
        let err = DatabaseTls::default()
            .resolve_in("not a url", None)
            .unwrap_err();
        assert_eq!(err, "the admin database URL is not a valid PostgreSQL URL");
        let err = DatabaseTls::default()
            .resolve_in(&format!("{URL}?sslmode=sometimes"), None)
            .unwrap_err();
        assert_eq!(err, "the admin database URL is not a valid PostgreSQL URL");
    }

    #[test]
    fn tls_failures_are_told_apart_from_other_errors() {
        let unknown = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(tls_failure(&unknown).unwrap().contains("unknown issuer"));
        let refused = sqlx::Error::Tls("server does not support TLS".into());
        assert!(
            tls_failure(&refused)
                .unwrap()
                .contains("never falls back to plaintext")
        );
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(tls_failure(&reset), None);
        assert_eq!(tls_failure(&sqlx::Error::PoolTimedOut), None);
    }
}
