//! Connections to providers' backends.
//!
//! Each provider has a pool with one multiplexed HTTP/2 connection per
//! endpoint, opened on first use and reopened when it closes. Calls read
//! the open connection without taking a lock; only dialling is serialized.
//! Connections use mutual TLS with the gateway's own client certificate, and
//! the backend must prove that it is the provider: its certificate must name
//! the provider's member id. This module never reads or changes message
//! bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
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
use crate::proxy::deadline::{Deadline, encode_grpc_timeout};
use crate::proxy::headers::GRPC_TIMEOUT;

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
        let unavailable = |detail: String| GatewayError::UpstreamUnavailable {
            provider: provider.clone(),
            detail: format!("{endpoint}: {detail}"),
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
                detail: match presented {
                    Ok(member) => format!("{endpoint} presented a certificate for {member}"),
                    Err(error) => format!("{endpoint}: {error}"),
                },
            });
        }

        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Every call shares this connection: a caller that stops reading
            // holds at most one stream window of it, and it takes 64 such
            // callers to exhaust the connection window for everyone else.
            .initial_stream_window_size(512 << 10)
            .initial_connection_window_size(32 << 20)
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

/// How long a failed connection attempt is remembered: calls arriving in
/// the meantime fail at once instead of queueing for their own attempt.
const FAILURE_MEMORY: Duration = Duration::from_millis(500);

/// The endpoint that answered a call: an extension of its response.
#[derive(Debug, Clone)]
pub struct ServedBy(pub Arc<str>);

/// One backend address and its current connection.
#[derive(Debug)]
struct EndpointSlot {
    endpoint: Endpoint,
    /// The endpoint's address, as responses name it (see [`ServedBy`]).
    served_by: ServedBy,
    /// The open connection, read without locking on every call.
    connection: ArcSwapOption<SendRequest<UpstreamBody>>,
    /// The last failed attempt. Held while connecting, so that concurrent
    /// calls share one attempt.
    connecting: tokio::sync::Mutex<Option<(Instant, GatewayError)>>,
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
                    served_by: ServedBy(endpoint.address.as_str().into()),
                    connection: ArcSwapOption::empty(),
                    connecting: tokio::sync::Mutex::new(None),
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

    fn slot(&self, index: usize) -> &EndpointSlot {
        &self.endpoints[index % self.endpoints.len()]
    }

    /// Sends `request` to one of the provider's endpoints, round robin,
    /// moving on when one cannot be reached. A request is sent at most once:
    /// it is tried again (on the next endpoint, or once more on the only
    /// one) only when it certainly never left. Its `grpc-timeout` is set
    /// here, at the last moment, to what is left of `deadline`.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        deadline: &Deadline,
    ) -> Result<Response<Incoming>, GatewayError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let attempts = self.endpoints.len().max(2);
        let mut last_error = None;
        for attempt in 0..attempts {
            let slot = self.slot(start + attempt);
            let mut sender = match self.sender(slot).await {
                Ok(sender) => sender,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            };
            set_authority(&mut request, &slot.endpoint);
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, encode_grpc_timeout(deadline.remaining()));
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    response.extensions_mut().insert(slot.served_by.clone());
                    return Ok(response);
                }
                Err(mut error) => {
                    let detail = format!("{}: {}", slot.endpoint, error.error());
                    let Some(unsent) = error.take_message() else {
                        return Err(GatewayError::UpstreamFailed {
                            provider: self.provider.clone(),
                            detail,
                        });
                    };
                    // The connection closed under us: the next `sender`
                    // sees it closed and dials again.
                    request = unsent;
                    last_error = Some(GatewayError::UpstreamUnavailable {
                        provider: self.provider.clone(),
                        detail,
                    });
                }
            }
        }
        Err(
            last_error.unwrap_or_else(|| GatewayError::UpstreamUnavailable {
                provider: self.provider.clone(),
                detail: "no endpoints".to_owned(),
            }),
        )
    }

    /// Whether one of the provider's endpoints has, or can open, a
    /// connection now. A recent failure counts without dialling again.
    pub async fn reachable(&self) -> bool {
        for slot in &self.endpoints {
            if self.sender(slot).await.is_ok() {
                return true;
            }
        }
        false
    }

    /// An open connection to `slot`, dialling one if needed.
    async fn sender(&self, slot: &EndpointSlot) -> Result<SendRequest<UpstreamBody>, GatewayError> {
        let open = |slot: &EndpointSlot| {
            slot.connection
                .load()
                .as_deref()
                .filter(|sender| !sender.is_closed())
                .cloned()
        };
        if let Some(sender) = open(slot) {
            return Ok(sender);
        }
        let mut last_failure = slot.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(sender) = open(slot) {
            return Ok(sender);
        }
        if let Some((when, error)) = last_failure.as_ref()
            && when.elapsed() < FAILURE_MEMORY
        {
            return Err(error.clone());
        }
        match self.connector.connect(&self.provider, &slot.endpoint).await {
            Ok(sender) => {
                slot.connection.store(Some(Arc::new(sender.clone())));
                *last_failure = None;
                Ok(sender)
            }
            Err(error) => {
                tracing::warn!(provider = %self.provider, endpoint = %slot.endpoint, detail = error.detail().unwrap_or_default(), "upstream endpoint unavailable");
                slot.connection.store(None);
                *last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
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
