//! Connections to providers' backends.
//!
//! Each provider has a pool with one multiplexed HTTP/2 connection per
//! endpoint, opened on first use and reopened when it closes. Connections use
//! mutual TLS with the gateway's own client certificate, and the backend must
//! prove that it is the provider: its certificate must name the provider's
//! member id. This module never reads or changes message bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, Provider};
use crate::identity::MemberId;
use crate::identity::tls::member_of_chain;
use crate::proxy::GatewayError;

/// Errors of a request body, whatever produced it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every upstream request.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How to open a connection to any backend: shared by all pools.
pub struct UpstreamConnector {
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    pub fn new(tls: Arc<ClientConfig>, connect_timeout: Duration) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            connect_timeout,
        }
    }

    /// Dials `endpoint`, completes mutual TLS, checks that the backend is
    /// `provider`, and starts an HTTP/2 connection.
    async fn connect(
        &self,
        provider: &MemberId,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<UpstreamBody>, GatewayError> {
        let unavailable = |reason: String| GatewayError::UpstreamUnavailable {
            provider: provider.clone(),
            reason: format!("{endpoint}: {reason}"),
        };
        let dial = async {
            let tcp = TcpStream::connect(&endpoint.address)
                .await
                .map_err(|error| unavailable(format!("connect: {error}")))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(endpoint.server_name.clone(), tcp)
                .await
                .map_err(|error| unavailable(format!("TLS: {error}")))
        };
        let tls = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| {
                unavailable(format!("no connection within {:?}", self.connect_timeout))
            })??;

        let presented = member_of_chain(tls.get_ref().1.peer_certificates());
        if presented.as_ref() != Ok(provider) {
            return Err(GatewayError::UpstreamIdentity {
                provider: provider.clone(),
                presented: match presented {
                    Ok(member) => member.to_string(),
                    Err(error) => error.to_string(),
                },
            });
        }

        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_send_buf_size(256 << 10)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|error| unavailable(format!("HTTP/2 handshake: {error}")))?;
        let address = endpoint.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(endpoint = %address, %error, "upstream connection closed");
            }
        });
        tracing::debug!(%provider, endpoint = %endpoint, "upstream connection established");
        Ok(sender)
    }
}

/// One backend address and its current connection.
#[derive(Debug)]
struct EndpointSlot {
    endpoint: Endpoint,
    /// The open connection, if any. The lock is held while connecting so
    /// that concurrent calls share one handshake.
    connection: tokio::sync::Mutex<Option<SendRequest<UpstreamBody>>>,
}

/// The backends of one provider.
#[derive(Debug)]
pub struct ProviderPool {
    provider: MemberId,
    endpoints: Vec<EndpointSlot>,
    next: AtomicUsize,
    connector: Arc<UpstreamConnector>,
}

impl ProviderPool {
    pub fn new(provider: &Provider, connector: Arc<UpstreamConnector>) -> Self {
        Self {
            provider: provider.id.clone(),
            endpoints: provider
                .endpoints
                .iter()
                .map(|endpoint| EndpointSlot {
                    endpoint: endpoint.clone(),
                    connection: tokio::sync::Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            connector,
        }
    }

    /// The provider this pool reaches.
    pub fn provider(&self) -> &MemberId {
        &self.provider
    }

    /// The authority to put in requests sent to the endpoint at `index`.
    fn slot(&self, index: usize) -> &EndpointSlot {
        &self.endpoints[index % self.endpoints.len()]
    }

    /// Sends `request` to one of the provider's endpoints, round robin,
    /// moving on to the next endpoint when one cannot be reached. A request
    /// is sent at most once: once its first bytes may have left, a failure
    /// is the caller's to see.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..self.endpoints.len() {
            let slot = self.slot(start + attempt);
            let mut sender = match self.sender(slot).await {
                Ok(sender) => sender,
                Err(error) => {
                    tracing::debug!(provider = %self.provider, %error, "endpoint unavailable");
                    last_error = Some(error);
                    continue;
                }
            };
            set_authority(&mut request, &slot.endpoint);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => {
                    // The connection closed before the request left: it
                    // is safe to try it elsewhere.
                    let reason = error.error().to_string();
                    match error.take_message() {
                        Some(unsent) => {
                            *slot.connection.lock().await = None;
                            request = unsent;
                            last_error = Some(GatewayError::UpstreamUnavailable {
                                provider: self.provider.clone(),
                                reason: format!("{}: {reason}", slot.endpoint),
                            });
                        }
                        None => {
                            return Err(GatewayError::UpstreamFailed {
                                provider: self.provider.clone(),
                                reason,
                            });
                        }
                    }
                }
            }
        }
        Err(
            last_error.unwrap_or_else(|| GatewayError::UpstreamUnavailable {
                provider: self.provider.clone(),
                reason: "no endpoints".to_owned(),
            }),
        )
    }

    /// An open connection to `slot`, dialling one if needed.
    async fn sender(&self, slot: &EndpointSlot) -> Result<SendRequest<UpstreamBody>, GatewayError> {
        let mut connection = slot.connection.lock().await;
        if let Some(sender) = connection.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let sender = self
            .connector
            .connect(&self.provider, &slot.endpoint)
            .await?;
        *connection = Some(sender.clone());
        Ok(sender)
    }
}

/// Points the request at the endpoint: `https://host:port/same/path`.
fn set_authority(request: &mut Request<UpstreamBody>, endpoint: &Endpoint) {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(endpoint.authority.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}
