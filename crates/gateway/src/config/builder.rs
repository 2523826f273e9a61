//! Configurations written by programs rather than by operators: the
//! sandbox and the benchmark build theirs here, from typed values, and
//! write the same TOML an operator would, which the gateway then loads and
//! checks like any other file. (The development configuration is the
//! commented file shipped in `config/`, copied as it is.)

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use crate::identity::MemberId;

/// A gateway configuration under construction. Relative paths are
/// relative to the directory the file is written to, as in any
/// configuration file.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    table: Table,
}

impl ConfigBuilder {
    /// A gateway named `node_id`, acting as `identity` towards backends and
    /// listening on an ephemeral port of 127.0.0.1.
    pub fn new(node_id: &str, identity: &MemberId) -> Self {
        let mut builder = Self {
            table: Table::new(),
        };
        let gateway = builder.section(&["gateway"]);
        gateway.insert("node_id".into(), node_id.into());
        gateway.insert("listen".into(), "127.0.0.1:0".into());
        gateway.insert("identity".into(), identity.as_str().into());
        builder
    }

    /// The admin endpoint's address.
    pub fn admin(&mut self, address: SocketAddr) -> &mut Self {
        self.set(&["gateway"], "admin", address.to_string())
    }

    /// Streams per connection, and connections per client address.
    pub fn listener(&mut self, max_concurrent_streams: u32, per_address: u32) -> &mut Self {
        self.set(
            &["gateway"],
            "max_concurrent_streams",
            i64::from(max_concurrent_streams),
        )
        .set(
            &["gateway"],
            "max_connections_per_address",
            i64::from(per_address),
        )
    }

    /// The listener's certificate and key, the CA its clients' certificates
    /// chain to, and the CRLs they are checked against.
    pub fn server_tls(
        &mut self,
        certificate: &Path,
        private_key: &Path,
        client_ca: &Path,
        crls: &[&Path],
    ) -> &mut Self {
        let tls = ["gateway", "tls"];
        self.set(&tls, "certificate", path(certificate))
            .set(&tls, "private_key", path(private_key))
            .set(&tls, "client_ca", path(client_ca))
            .set(
                &tls,
                "crls",
                crls.iter().map(|crl| path(crl)).collect::<Vec<_>>(),
            )
    }

    /// The certificate and key the gateway presents to backends, and the CA
    /// their certificates chain to.
    pub fn upstream_tls(
        &mut self,
        certificate: &Path,
        private_key: &Path,
        server_ca: &Path,
    ) -> &mut Self {
        self.set(&["upstream"], "certificate", path(certificate))
            .set(&["upstream"], "private_key", path(private_key))
            .set(&["upstream"], "server_ca", path(server_ca))
    }

    /// How long connecting to a backend may take, and the longest deadline
    /// a call may have.
    pub fn upstream_timeouts(&mut self, connect: Duration, max_deadline: Duration) -> &mut Self {
        self.set(&["upstream"], "connect_timeout", duration(connect))
            .set(&["upstream"], "max_deadline", duration(max_deadline))
    }

    /// The Cedar schema, and the directory of policies.
    pub fn policy(&mut self, schema: &Path, policies: &Path) -> &mut Self {
        self.set(&["policy"], "schema", path(schema))
            .set(&["policy"], "policies", path(policies))
    }

    /// Turns the exchange log off.
    pub fn exchange_log_off(&mut self) -> &mut Self {
        self.set(&["exchange_log"], "enabled", false)
    }

    /// Keeps the exchange log in `data_dir`.
    pub fn exchange_log_in(&mut self, data_dir: &Path) -> &mut Self {
        self.set(&["exchange_log"], "data_dir", path(data_dir))
    }

    /// A purpose callers may declare.
    pub fn purpose(&mut self, code: &str, name: &str) -> &mut Self {
        self.set(&["purposes"], code, name)
    }

    /// A member, with the policy groups it is in.
    pub fn member(&mut self, id: &MemberId, name: &str, groups: &[&str]) -> &mut Self {
        let section = ["members", id.as_str()];
        self.set(&section, "name", name)
            .set(&section, "groups", groups.to_vec())
    }

    /// A provider's backend endpoints, reached over TLS.
    pub fn provider(
        &mut self,
        id: &MemberId,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) -> &mut Self {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|address| format!("https://{address}"))
            .collect();
        self.set(&["providers", id.as_str()], "endpoints", endpoints)
    }

    /// A published service and the providers that serve it.
    pub fn service(&mut self, name: &str, providers: &[MemberId]) -> &mut Self {
        let providers: Vec<&str> = providers.iter().map(MemberId::as_str).collect();
        self.set(&["services", name], "providers", providers)
    }

    /// The descriptor set that declares `service`.
    pub fn descriptor(&mut self, service: &str, set: &Path) -> &mut Self {
        self.set(&["services", service], "descriptor", path(set))
    }

    /// Citizen consent: the issuers' public keys, the provider whose feed
    /// tells revocations, and how long that feed may stay silent.
    pub fn consent(
        &mut self,
        issuer_keys: &Path,
        feed_provider: &MemberId,
        freshness: Duration,
    ) -> &mut Self {
        self.set(&["consent"], "issuer_keys", path(issuer_keys))
            .set(&["consent"], "feed_provider", feed_provider.as_str())
            .set(&["consent"], "freshness", duration(freshness))
    }

    /// The configuration as a TOML table, for a caller that merges more
    /// into it.
    pub fn into_table(self) -> Table {
        self.table
    }

    fn set(&mut self, section: &[&str], key: &str, value: impl Into<Value>) -> &mut Self {
        self.section(section).insert(key.to_owned(), value.into());
        self
    }

    /// The table at `path`, made if missing.
    fn section(&mut self, path: &[&str]) -> &mut Table {
        let mut table = &mut self.table;
        for key in path {
            let entry = table
                .entry(*key)
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            let Value::Table(inner) = entry else {
                unreachable!("made a table above")
            };
            table = inner;
        }
        table
    }
}

impl fmt::Display for ConfigBuilder {
    /// The configuration file's text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&toml::to_string(&self.table).map_err(|_| fmt::Error)?)
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// A duration as the configuration writes it: whole seconds, else
/// milliseconds.
fn duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn what_is_built_loads_as_built() {
        let gateway = MemberId::parse("SN/GOV/GOVBRIDGE/gateway").unwrap();
        let bank = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let registry = MemberId::parse("SN/GOV/ANEC/civil-registry").unwrap();
        let mut builder = ConfigBuilder::new("test-node", &gateway);
        builder
            .admin("127.0.0.1:0".parse().unwrap())
            .listener(64, 8)
            .server_tls(
                Path::new("pki/gateway.pem"),
                Path::new("pki/gateway.key"),
                Path::new("pki/ca.pem"),
                &[Path::new("pki/crl.pem")],
            )
            .upstream_tls(
                Path::new("pki/up.pem"),
                Path::new("pki/up.key"),
                Path::new("pki/ca.pem"),
            )
            .upstream_timeouts(Duration::from_millis(1500), Duration::from_secs(60))
            .policy(
                Path::new("policies/schema.cedarschema"),
                Path::new("policies"),
            )
            .exchange_log_in(Path::new("log"))
            .purpose("KYC", "Know your customer")
            .member(&bank, "A bank", &["banks"])
            .member(&registry, "The registry", &[])
            .provider(&registry, ["127.0.0.1:7001".parse().unwrap()])
            .service(
                "govbridge.civilregistry.v1.CivilRegistry",
                std::slice::from_ref(&registry),
            )
            .descriptor(
                "govbridge.civilregistry.v1.CivilRegistry",
                Path::new("descriptors/civilregistry.binpb"),
            )
            .consent(Path::new("pki/keys.pem"), &registry, Duration::from_secs(5));
        let text = builder.to_string();
        let dir = tempfile::tempdir().unwrap();
        crate::catalog::testing::write_agency_descriptors(dir.path());
        let config = Config::parse(&dir.path().join("gateway.toml"), &text)
            .unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(config.gateway.node_id, "test-node");
        assert_eq!(config.gateway.identity, gateway);
        assert_eq!(config.gateway.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.gateway.tls.crls, [dir.path().join("pki/crl.pem")]);
        assert_eq!(config.upstream.connect_timeout, Duration::from_millis(1500));
        assert_eq!(config.upstream.max_deadline, Duration::from_secs(60));
        assert_eq!(config.exchange_log.data_dir, dir.path().join("log"));
        assert_eq!(config.purposes["KYC"], "Know your customer");
        assert_eq!(config.members[&bank].groups, ["banks"]);
        assert_eq!(config.providers[&registry].endpoints.len(), 1);
        let service = &config.services["govbridge.civilregistry.v1.CivilRegistry"];
        assert_eq!(service.providers, std::slice::from_ref(&registry));
        let consent = config.consent.unwrap();
        assert_eq!(consent.feed_provider, registry);
        assert_eq!(consent.freshness, Duration::from_secs(5));

        let mut off = ConfigBuilder::new("off", &gateway);
        off.server_tls(
            Path::new("a.pem"),
            Path::new("a.key"),
            Path::new("ca.pem"),
            &[],
        )
        .upstream_tls(Path::new("a.pem"), Path::new("a.key"), Path::new("ca.pem"))
        .policy(Path::new("s.cedarschema"), Path::new("p"))
        .exchange_log_off();
        let config = Config::parse(Path::new("off.toml"), &off.to_string()).unwrap();
        assert!(!config.exchange_log.enabled);
    }
}
