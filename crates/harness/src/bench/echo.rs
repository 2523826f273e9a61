//! The echo backend that benchmarks measure against
//! (`govbridge.bench.v1.Echo`).
//!
//! Served over mutual TLS like an agency, but it admits any peer the CA
//! admits: the gateway, nginx and a load generator calling it directly all
//! measure the same backend. It must never be published next to real
//! services: it answers anyone with whatever it is sent.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use gateway::identity::tls::{ServerTls, TlsError};
use gateway::net::{ListenerSettings, TlsListener, with_peer};
use gateway::proto::bench::v1::echo_server::{Echo, EchoServer};
use gateway::proto::bench::v1::{Payload, StreamRequest};

/// The largest message the echo backend reads or writes (the gateway's
/// default limit).
const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Messages of one server stream, at most: 1,000 is the benchmark's.
const MAX_STREAM_COUNT: u32 = 1_000_000;

/// Why the echo backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EchoStartError {
    #[error("echo backend: TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("echo backend: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The echo service's handlers.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type ServerStreamStream = PayloadStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let StreamRequest { count, size } = request.into_inner();
        if count > MAX_STREAM_COUNT || size as usize > MAX_MESSAGE_SIZE {
            return Err(Status::invalid_argument(format!(
                "count at most {MAX_STREAM_COUNT}, size at most {MAX_MESSAGE_SIZE}"
            )));
        }
        let payload = Payload {
            body: vec![0x5a; size as usize],
        };
        let stream = tokio_stream::iter((0..count).map(move |_| Ok(payload.clone())));
        Ok(Response::new(Box::pin(stream)))
    }

    type BidiStream = PayloadStream;

    async fn bidi(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let stream = request.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The echo backend, bound and ready to serve.
#[derive(Debug)]
pub struct EchoBackend {
    listener: TlsListener,
}

impl EchoBackend {
    /// Binds on `address` with `tls`; any client certificate that chains to
    /// `tls.client_ca` (and is not revoked) may call.
    pub async fn bind(address: SocketAddr, tls: &ServerTls) -> Result<Self, EchoStartError> {
        let config = tls.listener_tls()?;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| EchoStartError::Bind { address, source })?;
        let settings = ListenerSettings {
            // The load generator and the proxies in front open many
            // connections from loopback.
            max_connections_per_address: 4096,
            ..ListenerSettings::backend()
        };
        Ok(Self {
            listener: TlsListener::new(tcp, config, settings),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let server = EchoServer::new(EchoService)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        self.listener
            .serve(move |peer| with_peer(peer, server.clone()), shutdown)
            .await;
    }
}
