//! The passthrough: where the gateway's request path is assembled.
//!
//! [`Gateway::bind`] builds everything a configuration describes (TLS, the
//! member registry, the route table and upstream pools) and binds the
//! listener; [`GatewayService::forward`] is the request path, step by step,
//! in the order of the diagram in the crate docs. Messages are never decoded
//! here: bodies are relayed frame by frame in both directions.

mod body;
pub mod deadline;
mod error;
pub mod headers;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::Config;
use crate::identity::MemberId;
use crate::identity::tls::TlsError;
use crate::net::{PeerInfo, TlsListener};
use crate::routing::{RouteTable, UpstreamConnector};
pub use body::{RequestBody, ResponseBody};
pub use deadline::Deadline;
pub use error::{Fault, GatewayError};
use headers::{BRIDGE_REQUEST_ID, CallHeaders};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("gateway.tls: {0}")]
    ServerTls(TlsError),
    #[error("upstream: {0}")]
    UpstreamTls(TlsError),
    #[error(
        "gateway.identity: the upstream certificate {certificate} names {found}, not {identity}"
    )]
    IdentityMismatch {
        identity: MemberId,
        certificate: std::path::PathBuf,
        found: String,
    },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything a call needs that one configuration determines.
#[derive(Debug)]
pub struct GatewayState {
    node_id: String,
    members: HashSet<MemberId>,
    routes: RouteTable,
    max_deadline: Duration,
}

impl GatewayState {
    /// Builds the state of a configuration: loads upstream TLS material and
    /// sets up the pools. Connections are opened lazily.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        let upstream_tls = config
            .upstream
            .tls
            .client_config()
            .map_err(StartError::UpstreamTls)?;
        // Backends accept only `gateway.identity`: a certificate naming
        // anyone else would have every call refused, so refuse to start.
        let certificate = &config.upstream.tls.certificate;
        let chain = crate::identity::tls::load_certificates(certificate)
            .map_err(StartError::UpstreamTls)?;
        let found = crate::identity::tls::member_of_chain(Some(&chain));
        if found.as_ref() != Ok(&config.gateway.identity) {
            return Err(StartError::IdentityMismatch {
                identity: config.gateway.identity.clone(),
                certificate: certificate.clone(),
                found: match found {
                    Ok(member) => member.to_string(),
                    Err(error) => error.to_string(),
                },
            });
        }
        let connector = Arc::new(UpstreamConnector::new(
            upstream_tls,
            config.upstream.connect_timeout,
        ));
        Ok(Self {
            node_id: config.gateway.node_id.clone(),
            members: config.members.keys().cloned().collect(),
            routes: RouteTable::new(config, &connector),
            max_deadline: config.upstream.max_deadline,
        })
    }

    /// This gateway's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// A gateway, bound and ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TlsListener,
    state: Arc<GatewayState>,
}

impl Gateway {
    /// Validates what a start needs (TLS material on both hops, routes)
    /// without binding anything: what `check-config` runs.
    pub fn check(config: &Config) -> Result<(), StartError> {
        config
            .gateway
            .tls
            .server_config()
            .map_err(StartError::ServerTls)?;
        GatewayState::new(config)?;
        Ok(())
    }

    /// Builds the gateway for `config` and binds its listener.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let tls = config
            .gateway
            .tls
            .server_config()
            .map_err(StartError::ServerTls)?;
        let state = Arc::new(GatewayState::new(config)?);
        let address = config.gateway.listen;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        Ok(Self {
            listener: TlsListener::new(tcp, tls, config.gateway.listener.clone()),
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains open calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        tracing::info!(node = state.node_id(), "gateway serving");
        self.listener
            .serve(
                move |peer| GatewayService::new(state.clone(), &peer),
                shutdown,
            )
            .await;
    }
}

/// The gateway's service for one partner connection.
#[derive(Debug, Clone)]
pub struct GatewayService {
    state: Arc<GatewayState>,
    /// The caller, read once from the connection's certificate; an error
    /// here refuses every call on the connection.
    caller: Result<MemberId, GatewayError>,
}

impl GatewayService {
    fn new(state: Arc<GatewayState>, peer: &PeerInfo) -> Self {
        let caller = match &peer.member {
            Err(reason) => Err(GatewayError::NoMemberIdentity(reason.clone())),
            Ok(member) if !state.members.contains(member) => {
                Err(GatewayError::UnknownMember(member.clone()))
            }
            Ok(member) => Ok(member.clone()),
        };
        Self { state, caller }
    }

    async fn handle(self, request: Request<Incoming>) -> Response<ResponseBody> {
        let received = Instant::now();
        // Cloning a `Uri` shares its bytes: the route and the log borrow it.
        let uri = request.uri().clone();
        let request_id = match headers::request_id(request.headers()) {
            Ok(id) => id,
            Err(error) => return self.refuse(error, &headers::fresh_request_id(), &uri),
        };
        match self.forward(request, &uri, received, &request_id).await {
            Ok(mut response) => {
                response.headers_mut().insert(BRIDGE_REQUEST_ID, request_id);
                response
            }
            Err(error) => self.refuse(error, &request_id, &uri),
        }
    }

    /// The request path. Each step may refuse the call; the first refusal
    /// is the answer.
    async fn forward(
        &self,
        request: Request<Incoming>,
        uri: &http::Uri,
        received: Instant,
        request_id: &HeaderValue,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let caller = self.caller.clone()?;
        headers::check_grpc(&request)?;
        let call = CallHeaders::read(request.headers())?;
        let route = self.state.routes.route(uri.path(), call.target.as_ref())?;
        let deadline = Deadline::new(received, call.timeout, self.state.max_deadline);

        let (parts, body) = request.into_parts();
        let (body, call_end) = RequestBody::new(body);
        let mut upstream = Request::new(body.boxed_unsync());
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = parts.uri;
        *upstream.headers_mut() =
            headers::upstream_headers(&parts.headers, &caller, &call, request_id);

        let provider = route.provider.clone();
        let mut response =
            tokio::time::timeout_at(deadline.at(), provider.send(upstream, &deadline))
                .await
                .map_err(|_| GatewayError::DeadlineExceeded(deadline.elapsed()))??;
        headers::strip_bridge_headers(response.headers_mut());
        Ok(response
            .map(|body| ResponseBody::relay(body, call_end, deadline, provider.provider().clone())))
    }

    fn refuse(
        &self,
        error: GatewayError,
        request_id: &HeaderValue,
        uri: &http::Uri,
    ) -> Response<ResponseBody> {
        tracing::info!(
            request_id = request_id.to_str().unwrap_or_default(),
            caller = self.caller.as_ref().map(ToString::to_string).unwrap_or_default(),
            path = uri.path(),
            bridge_error = error.kind(),
            code = ?error.code(),
            fault = ?error.fault(),
            detail = error.detail().unwrap_or_default(),
            "call refused: {error}"
        );
        error.into_response(Some(request_id))
    }
}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
