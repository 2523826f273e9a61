//! What a benchmark run needs on disk: the dev PKI plus certificates for
//! the echo backend and nginx, member certificates for the load
//! connections (kept in memory), and the gateway configurations.
//!
//! Every target is measured with the same CA, the same certificates and
//! the same TLS settings. Nothing here is meant for production: the CA key
//! sits next to what it signs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::{self, CertificateAuthority, LeafRequest, Usage};
use gateway::config::ConfigBuilder;
use gateway::identity::MemberId;
use gateway::identity::tls::{ServerTls, crypto_provider};

/// The provider that publishes the echo service.
pub const ECHO_MEMBER: &str = "SN/GOV/BENCH/echo";
/// nginx's identity towards the echo backend.
pub const NGINX_MEMBER: &str = "SN/COM/BENCH/nginx";
/// The purpose every benchmark call declares.
pub const PURPOSE: &str = "BENCH";
/// The published service.
pub const ECHO_SERVICE: &str = "govbridge.bench.v1.Echo";
/// The group of the load members, which the bench policy permits.
const LOAD_GROUP: &str = "bench-load";

/// The member id of load connection `index`.
pub fn load_member(index: usize) -> String {
    format!("SN/COM/BENCH/load-{index}")
}

/// A benchmark directory: `pki/`, configurations, policies, exchange logs.
#[derive(Debug)]
pub struct BenchDir {
    pub dir: PathBuf,
    ca: CertificateAuthority,
}

impl BenchDir {
    /// Makes the PKI under `dir/pki` if missing, and the echo backend's and
    /// nginx's certificates.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let pki_dir = dir.join("pki");
        if !pki_dir.join(pki::CA_CERT).exists() {
            crate::dev::init_pki(&pki_dir)
                .with_context(|| format!("creating the PKI in {}", pki_dir.display()))?;
        }
        let ca = CertificateAuthority::load(&pki_dir)?;
        let echo = MemberId::parse(ECHO_MEMBER).map_err(anyhow::Error::msg)?;
        let mut request = LeafRequest::loopback_server("govbridge bench echo");
        request.member = Some(echo);
        request.usage = Usage::ServerAndClient;
        ca.issue(&request)?.write(&pki_dir, "echo")?;
        ca.issue(&LeafRequest::loopback_server("nginx"))?
            .write(&pki_dir, "nginx")?;
        let nginx = MemberId::parse(NGINX_MEMBER).map_err(anyhow::Error::msg)?;
        ca.issue(&LeafRequest::member(&nginx))?
            .write(&pki_dir, "nginx-upstream")?;
        Ok(Self {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// A file in the PKI.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    /// The echo backend's TLS: its certificate, any client of the CA.
    pub fn echo_tls(&self) -> ServerTls {
        ServerTls {
            certificate: self.pki("echo.pem"),
            private_key: self.pki("echo.key"),
            client_ca: self.pki(pki::CA_CERT),
            crls: vec![self.pki(pki::CRL)],
            crl_grace: std::time::Duration::ZERO,
            partners: Vec::new(),
        }
    }

    /// Client configurations for load members `0..count`, each with a
    /// certificate of its own, issued now and kept in memory.
    pub fn load_members(&self, count: usize) -> anyhow::Result<Vec<Arc<ClientConfig>>> {
        let provider = crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(
            CertificateDer::from_pem_slice(self.ca.certificate_pem().as_bytes())
                .context("the CA certificate")?,
        )?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let mut configs = Vec::with_capacity(count);
        for index in 0..count {
            let member = MemberId::parse(&load_member(index)).map_err(anyhow::Error::msg)?;
            let issued = self.ca.issue(&LeafRequest::member(&member))?;
            let key = PrivateKeyDer::from_pem_slice(issued.private_key_pem.as_bytes())
                .context("a load member's key")?;
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_webpki_verifier(verifier.clone())
                .with_client_auth_cert(vec![CertificateDer::from(issued.der)], key)?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            configs.push(Arc::new(config));
        }
        Ok(configs)
    }

    /// Where a gateway of `profile` keeps its exchange log.
    pub fn exchange_log_dir(&self, profile: GatewayProfile) -> PathBuf {
        self.dir.join(exchange_log_dir(profile))
    }

    /// Writes the configuration of a gateway in front of the echo backend
    /// at `echo`, with `members` load members registered and its admin
    /// endpoint (metrics) at `admin`, if given; returns its path.
    pub fn gateway_config(
        &self,
        profile: GatewayProfile,
        echo: SocketAddr,
        members: usize,
        admin: Option<SocketAddr>,
    ) -> anyhow::Result<PathBuf> {
        let name = profile.name();
        let policies = self.dir.join(format!("policies-{name}"));
        let schema = crate::dev::DEV_POLICIES[0].1;
        pki::write_file(
            &policies.join("schema.cedarschema"),
            schema.as_bytes(),
            0o644,
        )?;
        match profile {
            GatewayProfile::RoutingOnly => pki::write_file(
                &policies.join("allow-all.cedar"),
                b"// Routing only: every call of a registered member is allowed.\n\
                  @id(\"bench-allow-all\")\npermit (principal, action, resource);\n",
                0o644,
            )?,
            GatewayProfile::EverythingOn => {
                let (file, rules) = crate::dev::DEV_POLICIES[1];
                pki::write_file(&policies.join(file), rules.as_bytes(), 0o644)?;
                let permit = format!(
                    "// The load members may call the echo service, for the benchmark.\n\
                     @id(\"bench-load-calls-echo\")\n\
                     permit (\n  principal in Group::\"{LOAD_GROUP}\",\n  \
                     action in Action::\"{ECHO_SERVICE}\",\n  \
                     resource == Provider::\"{ECHO_MEMBER}\"\n)\n\
                     when {{ context.purpose == \"{PURPOSE}\" }};\n"
                );
                pki::write_file(&policies.join("bench.cedar"), permit.as_bytes(), 0o644)?;
            }
        }
        let echo_member = MemberId::parse(ECHO_MEMBER).map_err(anyhow::Error::msg)?;
        crate::dev::write_descriptors(&self.dir)?;
        let echo_descriptor =
            crate::dev::descriptor_of(ECHO_SERVICE).context("the echo service's descriptor")?;
        let gateway = MemberId::parse(crate::dev::GATEWAY_IDENTITY).map_err(anyhow::Error::msg)?;
        let mut config = ConfigBuilder::new(&format!("bench-{name}"), &gateway);
        config.listener(256, 4096);
        if let Some(admin) = admin {
            config.admin(admin);
        }
        crate::dev::gateway_tls(&mut config, Path::new("pki"))
            .policy(
                &Path::new(&format!("policies-{name}")).join("schema.cedarschema"),
                Path::new(&format!("policies-{name}")),
            )
            .purpose(PURPOSE, "Measuring the gateway")
            .member(&echo_member, "The benchmark's echo backend", &[])
            .provider(&echo_member, [echo])
            .service(ECHO_SERVICE, std::slice::from_ref(&echo_member))
            .descriptor(ECHO_SERVICE, &echo_descriptor);
        match profile {
            GatewayProfile::RoutingOnly => config.exchange_log_off(),
            GatewayProfile::EverythingOn => config.exchange_log_in(&exchange_log_dir(profile)),
        };
        for index in 0..members {
            let member = MemberId::parse(&load_member(index)).map_err(anyhow::Error::msg)?;
            config.member(&member, &format!("load connection {index}"), &[LOAD_GROUP]);
        }
        let text = format!(
            "# Written by `govbridge bench`: a gateway in front of the echo backend.\n{config}"
        );
        let path = self.dir.join(format!("gateway-{name}.toml"));
        pki::write_file(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// A gateway's exchange log directory, relative to the bench directory.
fn exchange_log_dir(profile: GatewayProfile) -> PathBuf {
    PathBuf::from(format!("exchange-log-{}", profile.name()))
}

/// What a benchmarked gateway does besides routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayProfile {
    /// Policy allow-all, exchange log off, consent off.
    RoutingOnly,
    /// The dev rules plus a permit for the echo service, the exchange log
    /// on (fsync per group commit). Consent stays off: the echo service
    /// names no data subject, so no policy asks for it.
    EverythingOn,
}

impl GatewayProfile {
    pub fn name(self) -> &'static str {
        match self {
            Self::RoutingOnly => "routing-only",
            Self::EverythingOn => "everything-on",
        }
    }
}

/// A directory removed when dropped: where a run keeps its files unless
/// the user names one.
#[derive(Debug)]
pub struct TemporaryDir(pub PathBuf);

impl TemporaryDir {
    pub fn new() -> std::io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("govbridge-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
