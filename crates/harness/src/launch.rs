//! Starting mock agencies as tasks of one process, and the shutdown switch
//! they share.
//!
//! Used by `govbridge agency`, `govbridge dev`, the demo, the sandbox and
//! the integration tests, so that all of them start agencies the same way.
//! It never starts the gateway: that is [`gateway::proxy::Gateway::bind`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::agencies::config::SigningKeyConfig;
use crate::agencies::{self, Agency, Dataset};
use gateway::consent::artefact::ConsentSigner;
use gateway::identity::MemberId;
use gateway::identity::tls::{ServerTls, TlsError};
use gateway::net::{ListenerSettings, TlsListener, with_peer};

/// Why an agency cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgencyStartError {
    #[error("agency {agency}: TLS: {source}")]
    Tls {
        agency: &'static str,
        source: TlsError,
    },
    #[error("agency {agency}: {message}")]
    SigningKey {
        agency: &'static str,
        message: String,
    },
    #[error("agency {agency}: cannot listen on {address}: {source}")]
    Bind {
        agency: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A mock agency, bound and ready to serve.
#[derive(Debug)]
pub struct BoundAgency {
    agency: Agency,
    listener: TlsListener,
    service: agencies::AgencyService,
}

impl BoundAgency {
    /// Binds `agency` on `address` with the given TLS material; it will
    /// accept calls only from `gateway`. MyGov signs consents with
    /// `signing_key`, which it requires.
    pub async fn bind(
        agency: Agency,
        address: SocketAddr,
        tls: &ServerTls,
        gateway: MemberId,
        data: Arc<Dataset>,
        signing_key: Option<&SigningKeyConfig>,
    ) -> Result<Self, AgencyStartError> {
        let signer = match (agency, signing_key) {
            (Agency::MyGov, None) => {
                return Err(AgencyStartError::SigningKey {
                    agency: agency.name(),
                    message: "agencies.servers.mygov.signing_key is required: the key that \
                              signs consent artefacts"
                        .to_owned(),
                });
            }
            (_, None) => None,
            (_, Some(key)) => Some(Arc::new(
                ConsentSigner::load(&key.key_id, &key.file).map_err(|error| {
                    AgencyStartError::SigningKey {
                        agency: agency.name(),
                        message: error.to_string(),
                    }
                })?,
            )),
        };
        let tls = tls.listener_tls().map_err(|source| AgencyStartError::Tls {
            agency: agency.name(),
            source,
        })?;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| AgencyStartError::Bind {
                agency: agency.name(),
                address,
                source,
            })?;
        Ok(Self {
            agency,
            listener: TlsListener::new(tcp, tls, ListenerSettings::backend()),
            service: agencies::service(agency, data, gateway, signer),
        })
    }

    /// Turns fault injection on (see [`agencies::fault`]): calls may ask
    /// for failures in a header, and the returned switch fails every other
    /// call. For tests and demos only: no configuration key does this.
    pub fn with_faults(mut self) -> (Self, agencies::fault::FaultSwitch) {
        let switch = agencies::fault::FaultSwitch::default();
        self.service = agencies::fault::with_faults(self.service, switch.clone());
        (self, switch)
    }

    pub fn agency(&self) -> Agency {
        self.agency
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let service = self.service;
        tracing::info!(agency = self.agency.name(), "agency serving");
        self.listener
            .serve(move |peer| with_peer(peer, service.clone()), shutdown)
            .await;
    }
}

/// A shutdown signal that many tasks can wait on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: tokio::sync::watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: tokio::sync::watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub async fn wait(mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.sender.send(true);
    }
}
