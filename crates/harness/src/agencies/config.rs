//! `[agencies]`: which mock agencies a dev or test setup runs, where, and
//! with which certificates.
//!
//! The section lives in the gateway's configuration file so that one file
//! describes a whole dev setup, but the gateway never reads it: it is
//! parsed here, with the gateway's [`Source`] so that a mistake is reported
//! with the same file, line and key as any other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use gateway::config::{ConfigError, Source, quoted};
use gateway::identity::tls::ServerTls;

use super::Agency;

/// The mock agencies of a configuration file.
#[derive(Debug, Clone)]
pub struct AgenciesConfig {
    /// Seed of the synthetic data set.
    pub seed: u64,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
    pub agencies: BTreeMap<&'static str, AgencyConfig>,
}

/// One agency's listener.
#[derive(Debug, Clone)]
pub struct AgencyConfig {
    pub agency: Agency,
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The key MyGov signs consent artefacts with.
    pub signing_key: Option<SigningKeyConfig>,
}

/// An Ed25519 signing key (PKCS#8 PEM) and the key id it signs under.
#[derive(Debug, Clone)]
pub struct SigningKeyConfig {
    pub key_id: String,
    pub file: PathBuf,
}

impl AgenciesConfig {
    /// The `[agencies]` section of the file at `path`, if it has one.
    pub fn load(path: &Path) -> Result<Option<Self>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {error}"),
        })?;
        Self::parse(path, &text)
    }

    /// The `[agencies]` section of `text`, as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Option<Self>, ConfigError> {
        let source = Source::new(path, text);
        let file: RawFile = source.deserialize()?;
        file.agencies
            .map(|agencies| validate(&source, &agencies))
            .transpose()
    }

    /// The TLS material of one agency's listener.
    pub fn server_tls(&self, agency: &AgencyConfig) -> ServerTls {
        ServerTls {
            certificate: agency.certificate.clone(),
            private_key: agency.private_key.clone(),
            client_ca: self.client_ca.clone(),
            crls: self.crls.clone(),
            crl_grace: Duration::ZERO,
            partners: Vec::new(),
        }
    }
}

/// The whole file, of which only `[agencies]` is read here: the gateway
/// checks the rest.
#[derive(Debug, Deserialize)]
struct RawFile {
    agencies: Option<RawAgencies>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgencies {
    seed: Spanned<u64>,
    client_ca: Spanned<String>,
    #[serde(default)]
    crls: Vec<Spanned<String>>,
    #[serde(default)]
    servers: BTreeMap<Spanned<String>, RawAgency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    listen: Spanned<String>,
    certificate: Spanned<String>,
    private_key: Spanned<String>,
    signing_key: Option<Spanned<String>>,
    signing_key_id: Option<Spanned<String>>,
}

fn validate(source: &Source<'_>, raw: &RawAgencies) -> Result<AgenciesConfig, ConfigError> {
    let mut agencies = BTreeMap::new();
    for (key, server) in &raw.servers {
        let path = format!("agencies.servers.{}", quoted(key.get_ref()));
        let agency: Agency = key
            .get_ref()
            .parse()
            .map_err(|error| source.error(&path, key, format!("{error}")))?;
        let signing_key = match (&server.signing_key, &server.signing_key_id) {
            (None, None) if agency == Agency::MyGov => {
                return Err(source.error(
                    &path,
                    key,
                    "needs `signing_key`: the key that signs consent artefacts",
                ));
            }
            (None, None) => None,
            (Some(file), id) if agency == Agency::MyGov => Some(SigningKeyConfig {
                key_id: id
                    .as_ref()
                    .map_or_else(|| "mygov".to_owned(), |id| id.get_ref().clone()),
                file: source.path(file),
            }),
            (None, Some(id)) => {
                return Err(source.error(
                    format!("{path}.signing_key_id"),
                    id,
                    "needs `signing_key`, the key file it names",
                ));
            }
            (Some(file), _) => {
                return Err(source.error(
                    format!("{path}.signing_key"),
                    file,
                    "only the `mygov` agency signs consent artefacts",
                ));
            }
        };
        agencies.insert(
            agency.name(),
            AgencyConfig {
                agency,
                listen: source.socket_addr(&format!("{path}.listen"), &server.listen)?,
                certificate: source.path(&server.certificate),
                private_key: source.path(&server.private_key),
                signing_key,
            },
        );
    }
    Ok(AgenciesConfig {
        seed: *raw.seed.get_ref(),
        client_ca: source.path(&raw.client_ca),
        crls: raw.crls.iter().map(|crl| source.path(crl)).collect(),
        agencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portal cannot start without the key it signs consents with:
    /// the file says so, at its line, not the agency at bind time.
    #[test]
    fn the_portal_without_its_signing_key_is_named_at_its_line() {
        let text = "[agencies]\nseed = 1\nclient_ca = \"ca.pem\"\n\n\
                    [agencies.servers.mygov]\nlisten = \"127.0.0.1:0\"\n\
                    certificate = \"a.pem\"\nprivate_key = \"a.key\"\n";
        let error = AgenciesConfig::parse(Path::new("dev/govbridge.toml"), text).unwrap_err();
        let said = error.to_string();
        assert!(said.contains("agencies.servers.mygov"), "{said}");
        assert!(said.contains("signing_key"), "{said}");
        assert_eq!(error.line, Some(5), "{said}");
    }
}
