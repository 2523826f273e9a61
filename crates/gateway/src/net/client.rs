//! A gRPC channel to the gateway over mutual TLS: one HTTP/2 connection,
//! usable as the transport of any generated tonic client. Tonic's own
//! transport is not compiled in; benchmarks, the demo and partners' Rust
//! tests use this instead.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::MemberId;
use crate::identity::tls::member_of_chain;

/// Why a channel could not be opened.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection to `address`; clones share it.
#[derive(Debug, Clone)]
pub struct Channel {
    sender: SendRequest<tonic::body::Body>,
    /// `https://server-name`: generated clients send bare paths.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Channel {
    /// Connects to `address`, verifying its certificate for `server_name`
    /// (the dev gateway's certificate names `localhost`).
    pub async fn connect(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, ConnectError> {
        Self::connect_checked(address, server_name, tls, None).await
    }

    /// [`Self::connect`] to a backend that must prove it is `member`: its
    /// certificate must name that member id, as the gateway requires of
    /// every provider it forwards to.
    pub async fn connect_to_member(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
        member: &MemberId,
    ) -> Result<Self, ConnectError> {
        Self::connect_checked(address, server_name, tls, Some(member)).await
    }

    async fn connect_checked(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
        member: Option<&MemberId>,
    ) -> Result<Self, ConnectError> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_owned())?;
        let authority = http::uri::Authority::try_from(server_name)?;
        let stream = TlsConnector::from(tls).connect(name, tcp).await?;
        if let Some(member) = member {
            let presented = member_of_chain(stream.get_ref().1.peer_certificates());
            match presented {
                Ok(presented) if presented == *member => {}
                Ok(presented) => {
                    return Err(format!(
                        "{address} presented a certificate for {presented}, not {member}"
                    )
                    .into());
                }
                Err(error) => return Err(format!("{address}: {error}").into()),
            }
        }
        let sender = handshake(stream).await?;
        Ok(Self {
            sender,
            scheme: http::uri::Scheme::HTTPS,
            authority,
        })
    }

    /// Whether the connection has closed: a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Connects to `authority` (`host:port`) in plain HTTP/2 (h2c with
    /// prior knowledge), as OTLP collectors listen next to their senders.
    pub async fn connect_plaintext(authority: http::uri::Authority) -> Result<Self, ConnectError> {
        let tcp = TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let sender = handshake(tcp).await?;
        Ok(Self {
            sender,
            scheme: http::uri::Scheme::HTTP,
            authority,
        })
    }
}

/// An HTTP/2 client connection over `stream`, driven by a task of its own.
async fn handshake<S>(stream: S) -> Result<SendRequest<tonic::body::Body>, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "client connection ended");
        }
    });
    Ok(sender)
}

impl tower::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        Box::pin(self.sender.send_request(request))
    }
}
