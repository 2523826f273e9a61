//! The bundle over HTTPS: a directory serves the file a publication wrote,
//! and gateways fetch it.
//!
//! Plain HTTP/1.1 over TLS, one `GET` per poll: any web server or object
//! store can serve a bundle as well (it is a static file, and its
//! signature, not the transport, is what a gateway trusts). TLS keeps who
//! polls what private, and the CA a gateway checks the directory against
//! keeps a stranger from answering with a stale but validly signed bundle
//! for longer than it stays valid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::identity::tls::{self, TlsError};

/// How long a directory waits for a client's handshake or request.
const IDLE: Duration = Duration::from_secs(10);
/// The longest a directory keeps a connection, read or not: a gateway
/// gives up on a fetch after 10 s.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections a directory serves at once; those beyond are closed as
/// they come.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections one address (an IPv6 /64) holds at once: a gateway polls
/// with one, so that one client cannot take every place.
pub const MAX_CONNECTIONS_PER_ADDRESS: u32 = 8;

/// The path a directory serves its bundle under.
pub const BUNDLE_PATH: &str = "/bundle.json";

/// Fetches the bundle at `url` (`https://host:port/path`), checking the
/// server against the CA certificates in `ca`; gives up after `timeout`.
pub async fn fetch(url: &Uri, ca: &Path, timeout: Duration) -> Result<Vec<u8>, String> {
    let tls = tls::verifying_client_config(ca).map_err(|error| error.to_string())?;
    tokio::time::timeout(timeout, get(url, tls))
        .await
        .map_err(|_| format!("no answer from {url} within {timeout:?}"))?
}

async fn get(url: &Uri, tls: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let (Some("https"), Some(authority)) = (url.scheme_str(), url.authority()) else {
        return Err(format!("{url} is not an https:// URL"));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let failed = |what: &str, error: &dyn std::fmt::Display| format!("{what} {url}: {error}");
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|error| failed("cannot connect to", &error))?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|error| failed("no server name in", &error))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|error| failed("TLS with", &error))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| failed("HTTP with", &error))?;
    tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |path| path.as_str());
    let request = Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|error| failed("cannot ask", &error))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| failed("no answer from", &error))?;
    if response.status() != StatusCode::OK {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), super::MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|error| failed("cannot read the bundle from", &error))?;
    Ok(body.to_bytes().to_vec())
}

/// A directory's HTTPS server: answers `GET` [`BUNDLE_PATH`] with the
/// file at `bundle` as it is at each request, so that publishing is
/// replacing that file (atomically: `directory publish` renames it into
/// place).
pub struct Server {
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    bundle: PathBuf,
    max_connections: usize,
    max_connections_per_address: u32,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `address` with the certificate and key given.
    pub async fn bind(
        address: SocketAddr,
        certificate: &Path,
        private_key: &Path,
        bundle: &Path,
    ) -> Result<Self, String> {
        let config = server_config(certificate, private_key).map_err(|error| error.to_string())?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| format!("cannot listen on {address}: {error}"))?;
        Ok(Self {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(config),
            bundle: bundle.to_owned(),
            max_connections: MAX_CONNECTIONS,
            max_connections_per_address: MAX_CONNECTIONS_PER_ADDRESS,
        })
    }

    /// Lets one address hold `connections` at once instead of
    /// [`MAX_CONNECTIONS_PER_ADDRESS`]; 0: no cap of its own (every
    /// client seen from one address, behind a proxy).
    pub fn with_max_connections_per_address(mut self, connections: u32) -> Self {
        self.max_connections_per_address = connections;
        self
    }

    /// Serves at most `connections` at once instead of
    /// [`MAX_CONNECTIONS`].
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    ///
    /// A client that never reads its answer keeps its connection at most
    /// [`CONNECTION_LIFETIME`], one address holds at most
    /// [`MAX_CONNECTIONS_PER_ADDRESS`], and one copy of the bundle is
    /// shared by every answer: connections, not clients, bound what the
    /// directory holds.
    pub async fn serve(self) {
        let bundle = Arc::new(Published::new(self.bundle));
        let places = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let per_address = match self.max_connections_per_address {
            0 => u32::MAX,
            limit => limit,
        };
        let addresses = crate::addresses::AddressSlots::new(per_address);
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "directory cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let address = match addresses.take(peer.ip()) {
                Ok(address) => address,
                Err(refusal) => {
                    // Once per episode, not once per connection of a flood.
                    if refusal == crate::addresses::Refusal::AtLimit {
                        tracing::warn!(
                            %peer,
                            limit = per_address,
                            "an address holds as many directory connections as it may; more \
                             are closed (behind a proxy, raise --max-connections-per-address)"
                        );
                    }
                    continue;
                }
            };
            let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
                tracing::debug!(%peer, "directory at its connection limit: closed");
                continue;
            };
            let (tls, bundle) = (self.tls.clone(), Arc::clone(&bundle));
            tokio::spawn(async move {
                let _places = (place, address);
                // A client that stalls its handshake or its request is
                // dropped, not kept.
                let Ok(Ok(stream)) = tokio::time::timeout(IDLE, tls.accept(tcp)).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let bundle = Arc::clone(&bundle);
                    async move { Ok::<_, std::convert::Infallible>(answer(&request, &bundle).await) }
                });
                let serving = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(IDLE)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, serving).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "directory connection ended"),
                    Err(_) => tracing::debug!(%peer, "directory connection closed at its lifetime"),
                }
            });
        }
    }
}

/// The bundle file a directory serves, read again when it changes (its
/// inode, size or modification time) and shared by every answer meanwhile.
#[derive(Debug)]
struct Published {
    path: PathBuf,
    read: std::sync::Mutex<Option<(FileVersion, Bytes)>>,
}

/// What tells one version of a file from the next.
type FileVersion = (u64, u64, Option<std::time::SystemTime>);

impl Published {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            read: std::sync::Mutex::new(None),
        }
    }

    /// The file as it is now.
    fn bytes(&self) -> std::io::Result<Bytes> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(&self.path)?;
        let version = (metadata.ino(), metadata.len(), metadata.modified().ok());
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, bytes)) = read.as_ref()
            && *seen == version
        {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(std::fs::read(&self.path)?);
        *read = Some((version, bytes.clone()));
        Ok(bytes)
    }
}

async fn answer<B>(request: &Request<B>, bundle: &Arc<Published>) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: Bytes, kind: &str| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        if let Ok(kind) = http::HeaderValue::from_str(kind) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, kind);
        }
        response
    };
    if request.uri().path() != BUNDLE_PATH {
        let text = format!("not found: the bundle is at {BUNDLE_PATH}\n");
        return respond(StatusCode::NOT_FOUND, text.into(), "text/plain");
    }
    if request.method() != http::Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"GET only\n"),
            "text/plain",
        );
    }
    let published = Arc::clone(bundle);
    let read = tokio::task::spawn_blocking(move || published.bytes())
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error)));
    match read {
        Ok(bytes) => respond(StatusCode::OK, bytes, "application/json"),
        Err(error) => {
            tracing::error!(bundle = %bundle.path.display(), %error, "cannot read the bundle to serve");
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"no bundle published\n"),
                "text/plain",
            )
        }
    }
}

fn server_config(
    certificate: &Path,
    private_key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = tls::load_certificates(certificate)?;
    let key = tls::load_private_key(private_key)?;
    rustls::ServerConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map(Arc::new)
        .map_err(|source| TlsError::Identity {
            path: certificate.to_owned(),
            source,
        })
}
