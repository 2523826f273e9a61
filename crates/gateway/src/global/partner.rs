//! What a partner instance's global configuration says of how to reach and
//! trust it: its `[instance]` (its gateways' member id, endpoints and TLS
//! name, its federation key, its log key when partners may witness its
//! log) and `[trust]` (the CA its members' and gateways' certificates
//! chain to, and its CRLs).
//!
//! Read by `govbridge directory learn`, which writes it into a
//! `[federation."XX"]` section, and by a gateway that follows the
//! partner's directory itself (`[federation."XX"] directory`), which runs
//! it from its cache of the partner's bundles. Files are named by their
//! path in the partner's bundle; the caller reads them from the bundle or
//! from the directory it was extracted into.

/// How a partner instance is reached and trusted, as it publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The member id its gateways' certificates name.
    pub gateway: crate::identity::MemberId,
    /// `https://host:port` of each of its gateways.
    pub endpoints: Vec<String>,
    /// The name its gateways' certificates carry, when not the host's.
    pub tls_name: Option<String>,
    /// Files of the bundle: its CA, its CRLs, the key its gateways sign
    /// assertions with, and its exchange log's key if it publishes one.
    pub ca: String,
    pub crls: Vec<String>,
    pub federation_key: String,
    pub log_key: Option<String>,
}

impl Published {
    /// From the `global.toml` text of version `version` of `partner`'s
    /// bundle, whose files `file` gives (`None` for a file it does not
    /// carry). The keys are checked to be verifier keys; the CA and CRLs
    /// are checked where they are used.
    pub fn of(
        partner: &str,
        version: u64,
        global: &str,
        file: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<Self, String> {
        let context = format!("{partner}'s global configuration (version {version})");
        let table: toml::Table = global
            .parse()
            .map_err(|error| format!("{context}: global.toml: {error}"))?;
        let section = |name: &str| {
            table
                .get(name)
                .and_then(toml::Value::as_table)
                .ok_or_else(|| format!("{context}: no [{name}] section"))
        };
        let instance = section("instance")?;
        let trust = section("trust")?;
        let text_of = |table: &toml::Table, key: &str| {
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("{context}: no `{key}`"))
        };
        let carried = |path: String| match file(&path) {
            Some(bytes) => Ok((path, bytes)),
            None => Err(format!("{context}: names {path}, which it does not carry")),
        };
        let strings = |table: &toml::Table, key: &str| -> Vec<String> {
            table
                .get(key)
                .and_then(toml::Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(toml::Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };

        let gateway = crate::identity::MemberId::parse(&text_of(instance, "gateway")?)
            .map_err(|error| format!("{context}: instance.gateway: {error}"))?;
        if gateway.instance() != partner {
            return Err(format!(
                "{context}: its gateway {gateway} is not of instance {partner}"
            ));
        }
        let endpoints = strings(instance, "endpoints");
        if endpoints.is_empty() {
            return Err(format!("{context}: [instance] names no endpoint"));
        }
        let federation_key = carried(text_of(instance, "federation_key")?)?;
        let log_key = instance
            .get("log_key")
            .and_then(toml::Value::as_str)
            .map(|path| carried(path.to_owned()))
            .transpose()?;
        for (path, key) in std::iter::once(&federation_key).chain(log_key.as_ref()) {
            let text = std::str::from_utf8(key).unwrap_or_default();
            crate::note::Verifier::parse(text)
                .map_err(|error| format!("{context}: {path}, a key of [instance]: {error}"))?;
        }
        let crls = strings(trust, "client_crls")
            .into_iter()
            .map(|path| carried(path).map(|(path, _)| path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            gateway,
            endpoints,
            tls_name: instance
                .get("tls_name")
                .and_then(toml::Value::as_str)
                .map(str::to_owned),
            ca: carried(text_of(trust, "client_ca")?)?.0,
            crls,
            federation_key: federation_key.0,
            log_key: log_key.map(|(path, _)| path),
        })
    }
}
