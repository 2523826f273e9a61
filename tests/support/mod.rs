//! A test bed: a dev PKI made at test time, the mock agencies and probe
//! backends on port 0, and a gateway in front of them, all in-process.
//!
//! Each test builds its own bed and drops it at the end; nothing is shared
//! between tests and no fixed port is used. Readiness needs no waiting:
//! every listener is bound before its address is handed out.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod feed;
pub mod probe;
pub mod process;
pub mod raw_h2;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use govbridge::agencies::fault::FaultSwitch;
use govbridge::agencies::{Agency, AgencyService, Dataset};
use govbridge::identity::MemberId;
use govbridge::identity::tls::ClientTls;
use govbridge::pki::LeafRequest;
use govbridge::sandbox::{Sandbox, SandboxBuilder};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

pub const SEED: u64 = govbridge::sandbox::DEFAULT_SEED;
pub const CBAO_KYC: &str = "SN/COM/CBAO/kyc";
pub const TREASURY: &str = "SN/GOV/DGCPT/treasury";
pub const PROBE: &str = "SN/GOV/PROBE/backend";

/// The mock agency called `name` (`civil-registry`, `tax`, `mygov`...).
pub fn agency(name: &str) -> Agency {
    Agency::ALL
        .into_iter()
        .find(|agency| agency.name() == name)
        .unwrap_or_else(|| panic!("no agency is called {name}"))
}

/// How to build a bed: a [`SandboxBuilder`] with the tests' defaults
/// (every call allowed unless [`Self::dev_policies`], a 5 s handshake
/// timeout) and the names tests use.
pub struct BedBuilder {
    sandbox: SandboxBuilder,
    dev_policies: bool,
}

impl BedBuilder {
    /// Adds `line` to the generated configuration's `[section]`, e.g.
    /// `services."govbridge.tax.v1.TaxAuthority"` and `max_deadline = "1s"`.
    pub fn setting(mut self, section: &str, line: &str) -> Self {
        self.sandbox = self.sandbox.setting(section, line);
        self
    }

    /// Merges `section` (TOML: `[limits]` and its subtables) into the
    /// gateway's configuration.
    pub fn limits(mut self, section: &str) -> Self {
        self.sandbox = self.sandbox.config(section);
        self
    }

    /// Runs agency `name` as `count` endpoints of its provider.
    pub fn replicas(mut self, name: &'static str, count: usize) -> Self {
        self.sandbox = self.sandbox.replicas(agency(name), count);
        self
    }

    /// Sets `[upstream]` `key` to `value` (TOML, e.g. `"\"1s\""` or `"3"`).
    pub fn upstream(self, key: &str, value: &str) -> Self {
        self.setting("upstream", &format!("{key} = {value}"))
    }

    /// Sets `[gateway]` `key` to `value` (TOML, e.g. `"\"1s\""` or `"3"`).
    pub fn gateway(self, key: &str, value: &str) -> Self {
        self.setting("gateway", &format!("{key} = {value}"))
    }

    /// Puts a TCP relay in front of agency `name` (`mygov`, `tax`...), for
    /// [`Bed::cut`].
    pub fn cuttable(mut self, name: &'static str) -> Self {
        self.sandbox = self.sandbox.cuttable(agency(name));
        self
    }

    pub fn without_agencies(mut self) -> Self {
        self.sandbox = self.sandbox.without_agencies();
        self
    }

    /// Publishes `server` as `service`, ahead of the real agency if there is
    /// one, so that calls without `bridge-target` reach the probe.
    pub fn probe(mut self, service: &'static str, server: AgencyService) -> Self {
        let provider = MemberId::parse(PROBE).unwrap();
        self.sandbox = self.sandbox.backend(service, provider, server);
        self
    }

    /// Issues the probes' certificates valid for `lifetime` only.
    pub fn backend_certificate_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.sandbox = self.sandbox.backend_certificate_lifetime(lifetime);
        self
    }

    /// Publishes `service` by a provider whose endpoint accepts TCP
    /// connections and then never answers.
    pub fn silent_provider(mut self, service: &'static str) -> Self {
        let provider = MemberId::parse("SN/GOV/SILENT/backend").unwrap();
        self.sandbox = self.sandbox.silent_provider(service, provider);
        self
    }

    /// Publishes `service` by a provider whose endpoint refuses connections.
    pub fn dead_provider(mut self, service: &'static str) -> Self {
        let provider = MemberId::parse("SN/GOV/DOWN/backend").unwrap();
        self.sandbox = self.sandbox.unreachable_provider(service, provider);
        self
    }

    /// Merges a TOML fragment into the generated configuration.
    pub fn config(mut self, fragment: impl Into<String>) -> Self {
        self.sandbox = self.sandbox.config(fragment);
        self
    }

    /// Authorizes with every policy file of `dir` (the dev schema unless
    /// it has one) instead of allowing every call.
    pub fn policies(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sandbox = self.sandbox.policies(dir);
        self.dev_policies = true;
        self
    }

    /// Authorizes with the dev policies of `config/policies/` instead of
    /// allowing every call.
    pub fn dev_policies(mut self) -> Self {
        self.dev_policies = true;
        self
    }

    pub fn handshake_timeout(self, timeout: &'static str) -> Self {
        self.gateway("handshake_timeout", &format!("\"{timeout}\""))
    }

    /// How long the consent feed may be silent before consent-bound calls
    /// are refused.
    pub fn consent_freshness(self, freshness: &'static str) -> Self {
        self.setting("consent", &format!("freshness = \"{freshness}\""))
    }

    pub fn max_deadline(self, deadline: &'static str) -> Self {
        self.upstream("max_deadline", &format!("\"{deadline}\""))
    }

    pub async fn start(self) -> Bed {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let builder = if self.dev_policies {
            self.sandbox
        } else {
            self.sandbox.allow_all()
        };
        let sandbox = builder
            .start()
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
        let agencies = Agency::ALL
            .into_iter()
            .filter_map(|agency| {
                let first = sandbox.agency_addrs(agency).first()?;
                Some((agency.name(), *first))
            })
            .collect();
        Bed {
            reloader: sandbox.reloader().clone(),
            pki: sandbox.pki_dir().to_owned(),
            gateway: sandbox.gateway_addr(),
            admin: sandbox.admin_addr(),
            agencies,
            data: sandbox.dataset().clone(),
            sandbox,
        }
    }
}

/// A running gateway with its backends: a [`Sandbox`] (which it derefs
/// to) with the shortcuts tests use. Dropping it stops everything.
pub struct Bed {
    pub reloader: govbridge::proxy::Reloader,
    pub pki: PathBuf,
    pub gateway: SocketAddr,
    /// The gateway's admin endpoint (plain HTTP).
    pub admin: SocketAddr,
    /// Each agency's first endpoint.
    pub agencies: HashMap<&'static str, SocketAddr>,
    pub data: Arc<Dataset>,
    pub sandbox: Sandbox,
}

impl std::ops::Deref for Bed {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl Bed {
    pub fn builder() -> BedBuilder {
        BedBuilder {
            sandbox: Sandbox::builder().setting("gateway", "handshake_timeout = \"5s\""),
            dev_policies: false,
        }
    }

    /// A bed with `probe` as the civil registry and no agency.
    pub async fn with_probe(probe: &probe::Probe) -> Bed {
        Self::builder()
            .without_agencies()
            .probe(probe::SERVICE, probe.server())
            .start()
            .await
    }

    /// A bed with every mock agency and no probe.
    pub async fn start() -> Bed {
        Self::builder().start().await
    }

    /// Client TLS for a demo member's certificate (`cbao-kyc`, `treasury`, ...).
    pub fn member_tls(&self, stem: &str) -> Arc<ClientConfig> {
        self.client_tls(
            &self.pki.join(format!("member-{stem}.pem")),
            &self.pki.join(format!("member-{stem}.key")),
        )
    }

    /// Client TLS from a certificate and key file, trusting the dev CA.
    pub fn client_tls(&self, certificate: &Path, private_key: &Path) -> Arc<ClientConfig> {
        ClientTls::new(
            self.pki.join("ca.pem"),
            certificate.to_owned(),
            private_key.to_owned(),
        )
        .client_config()
        .unwrap()
    }

    /// Issues a certificate from the dev CA and returns client TLS using it.
    pub fn issue_client(&self, name: &str, request: &LeafRequest) -> Arc<ClientConfig> {
        let (certificate, key) = self
            .ca()
            .issue(request)
            .unwrap()
            .write(&self.pki, name)
            .unwrap();
        self.client_tls(&certificate, &key)
    }

    /// An HTTP/2 client to the gateway for a demo member.
    pub async fn client(&self, stem: &str) -> H2Client {
        H2Client::connect(self.gateway, self.member_tls(stem))
            .await
            .unwrap()
    }

    /// The fault switch of replica `index` of agency `name`.
    pub fn fault(&self, name: &str, index: usize) -> &FaultSwitch {
        &self.sandbox.replica_faults(agency(name), index).switches()[0]
    }

    /// Cuts the network to every replica of agency `name`, made
    /// [`BedBuilder::cuttable`]: its connections drop and new ones are
    /// closed at once, as in a partition.
    pub fn cut(&self, name: &str) {
        assert!(
            self.sandbox.faults(agency(name)).cut(),
            "{name} is not cuttable"
        );
    }

    /// Cuts the network to replica `index` of agency `name` only.
    pub fn cut_replica(&self, name: &str, index: usize) {
        assert!(
            self.sandbox.replica_faults(agency(name), index).cut(),
            "{name} #{index} is not cuttable"
        );
    }

    /// Restores the network to replica `index` of agency `name`.
    pub fn restore_replica(&self, name: &str, index: usize) {
        self.sandbox.replica_faults(agency(name), index).restore();
    }

    /// Stops every server and waits for them to drain.
    pub async fn stop(self) {
        self.sandbox.shutdown().await;
    }
}

/// Why a test client could not connect.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// A minimal gRPC transport: one HTTP/2 connection over rustls, with no
/// timeout or retry layer of its own, so that tests see exactly what the
/// gateway does. Usable with every generated tonic client.
#[derive(Clone)]
pub struct H2Client {
    sender: SendRequest<tonic::body::Body>,
    pub key_exchange: Option<rustls::NamedGroup>,
    /// Becomes true when the connection is over.
    closed: tokio::sync::watch::Receiver<bool>,
}

impl H2Client {
    pub async fn connect(address: SocketAddr, tls: Arc<ClientConfig>) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(address).await?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let key_exchange = stream
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|group| group.name());
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = connection.await;
            let _ = closed_tx.send(true);
        });
        Ok(Self {
            sender,
            key_exchange,
            closed,
        })
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits (at most 5 s) for the server to close the connection.
    pub async fn closed_by_server(&self) -> bool {
        self.closed_within(std::time::Duration::from_secs(5)).await
    }

    /// Waits (at most `timeout`) for the server to close the connection.
    pub async fn closed_within(&self, timeout: std::time::Duration) -> bool {
        let mut closed = self.closed.clone();
        tokio::time::timeout(timeout, closed.wait_for(|closed| *closed))
            .await
            .is_ok()
    }
}

impl tower::Service<Request<tonic::body::Body>> for H2Client {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = Uri::builder()
            .scheme("https")
            .authority("localhost")
            .path_and_query(path)
            .build()
            .unwrap();
        let response = self.sender.send_request(request);
        Box::pin(response)
    }
}

/// Whether the gateway refuses `tls` at the TLS layer. An accepted client
/// that sends the HTTP/2 preface gets the server's SETTINGS back; a refused
/// one gets an alert or a closed connection.
pub async fn handshake_refused(address: SocketAddr, tls: Arc<ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(address).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let Ok(mut stream) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return true;
    };
    // Client preface, then an empty SETTINGS frame.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    if stream.write_all(preface).await.is_err() {
        return true;
    }
    let mut buffer = [0_u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the gateway neither refused nor served the connection"),
    }
}

/// Reads a stream of answers to its end, which must be `OK`: how many
/// messages it had.
pub async fn count_to_end<T>(stream: &mut tonic::Streaming<T>) -> usize {
    let mut count = 0;
    while stream.message().await.unwrap().is_some() {
        count += 1;
    }
    count
}

/// Adds a metadata entry to a request.
pub fn with_header<T>(
    mut request: tonic::Request<T>,
    name: &'static str,
    value: &str,
) -> tonic::Request<T> {
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

/// The `bridge-error` of a failed call, if the gateway made it.
/// The `bridge-request-id` the gateway answered with.
pub fn request_id_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("bridge-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn bridge_error(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("bridge-error")
        .map(|value| value.to_str().unwrap().to_owned())
}

/// Sends one gRPC message to `path` and returns the raw HTTP/2 response, so
/// that tests can look at frames that generated clients hide.
pub async fn raw_call(
    client: &mut H2Client,
    path: &str,
    message: &impl prost::Message,
) -> Response<Incoming> {
    use tower::{Service, ServiceExt};
    let payload = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    let request = Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(frame),
        )))
        .unwrap();
    client.ready().await.unwrap().call(request).await.unwrap()
}

/// Calls `path` at the gateway at `address` as a partner instance's
/// gateway does (`tls`, its upstream certificate), with `sealed` as its
/// assertion, `request_id` and the other `headers`, and an empty message:
/// the answer's headers (a refusal is trailers-only).
pub async fn asserted_call(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    (sealed, request_id): (String, &str),
    headers: &[(&str, &str)],
) -> http::HeaderMap {
    use tower::{Service, ServiceExt};
    let mut client = H2Client::connect(address, tls).await.unwrap();
    let mut request = Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("bridge-assertion", sealed)
        .header("bridge-request-id", request_id);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
        )))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    response.headers().clone()
}

/// Header `name` of `headers`, as text.
pub fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------
// The exchange log (tests/exchange_log.rs).

impl Bed {
    /// The gateway's exchange log: to force checkpoints and simulate store
    /// faults.
    pub fn exchange_log(&self) -> &govbridge::exchange_log::ExchangeLog {
        self.sandbox
            .exchange_log()
            .log()
            .expect("the bed's gateway runs with its exchange log")
    }

    /// Lets `members` call the Data Tracker: adds them to the
    /// configuration file's `exchange_log.data_tracker_clients` and
    /// reloads, as an operator would.
    pub fn allow_data_tracker(&self, members: &[&str]) {
        let path = self.config_path();
        let mut text = std::fs::read_to_string(path).unwrap();
        let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        text += &format!(
            "\n[exchange_log]\ndata_tracker_clients = [{}]\n",
            members.join(", ")
        );
        std::fs::write(path, text).unwrap();
        self.reloader.reload().unwrap();
    }
}

/// A request declaring purpose, reason and agent, as the dev policies ask.
pub fn declared<T>(message: T, purpose: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("bridge-purpose", purpose.parse().unwrap());
    metadata.insert("bridge-reason", "dossier 2025-0042".parse().unwrap());
    metadata.insert("bridge-user-id", "agent-17".parse().unwrap());
    request
}

/// A bed with every mock agency and the dev policies.
pub async fn dev_bed() -> Bed {
    Bed::builder().dev_policies().start().await
}

/// Runs the `govbridge` binary to completion.
pub fn govbridge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_govbridge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Standard output then standard error, for messages and assertions.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One plain HTTP/1.1 request to the admin endpoint, as any local
/// program could send it (no operator header, no token): (status, body).
pub async fn admin_request(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    admin_request_with(address, method, path, &[]).await
}

/// One request as an operator's tool sends it to a loopback endpoint
/// without a token: with the `x-govbridge-admin` header.
pub async fn operator_request(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    admin_request_with(address, method, path, &[("x-govbridge-admin", "1")]).await
}

/// One plain HTTP/1.1 request to the admin endpoint with extra `headers`
/// (a `host` among them replaces the endpoint's address).
pub async fn admin_request_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let tcp = TcpStream::connect(address).await.unwrap();
    admin_exchange(tcp, address, method, path, headers).await
}

/// [`admin_request_with`] over HTTPS (`gateway.admin_tls`), trusting the
/// CA certificates in `ca` for `localhost`.
pub async fn admin_request_tls(
    address: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let config = govbridge::identity::tls::verifying_client_config(ca).unwrap();
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    admin_exchange(tls, address, method, path, headers).await
}

/// Sends one request on `stream` and reads its answer to the end.
async fn admin_exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = String::new();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head += &format!("host: {address}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    let request =
        format!("{method} {path} HTTP/1.1\r\n{head}content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A VerifyIdentity request that matches the bed's citizen `citizen`.
pub fn verify_identity_of(
    bed: &Bed,
    citizen: usize,
) -> govbridge::proto::civilregistry::v1::VerifyIdentityRequest {
    let citizen = &bed.data.citizens[citizen];
    govbridge::proto::civilregistry::v1::VerifyIdentityRequest {
        nin: citizen.nin.to_string(),
        first_names: citizen.first_names.clone(),
        last_name: citizen.last_name.to_owned(),
        date_of_birth: citizen.date_of_birth.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The admin endpoint's metrics, for tests that check nothing leaked
// (tests/adversarial.rs, tests/connections.rs).

/// The value of one sample of the gateway's metrics, such as
/// `govbridge_connections_open` or
/// `govbridge_connections_closed_total{reason="idle"}`; 0 when absent.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = admin_request(admin, "GET", "/metrics").await;
    sample(&text, series)
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map_or(0.0, |(_, value)| value.parse().unwrap())
}

/// Waits (at most 30 s, polling) until `series` satisfies `expected`;
/// returns its value.
pub async fn wait_for_metric(
    admin: SocketAddr,
    series: &str,
    expected: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, text) = admin_request(admin, "GET", "/metrics").await;
        let value = sample(&text, series);
        if expected(value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stayed at {value}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a test expects the gateway to come back to once an attack is
/// over: the connections it had open and no call in flight.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub connections: f64,
}

impl Baseline {
    pub async fn take(admin: SocketAddr) -> Self {
        assert_eq!(metric(admin, "govbridge_calls_in_flight").await, 0.0);
        Self {
            connections: metric(admin, "govbridge_connections_open").await,
        }
    }

    /// Waits for the gateway to have no partner connection open (those of
    /// calls just made included) and takes that as the baseline.
    pub async fn quiet(admin: SocketAddr) -> Self {
        let baseline = Self { connections: 0.0 };
        baseline.restored(admin).await;
        baseline
    }

    /// Waits until the gateway is back to this baseline: no connection and
    /// no call left behind.
    pub async fn restored(self, admin: SocketAddr) {
        wait_for_metric(admin, "govbridge_connections_open", |open| {
            open == self.connections
        })
        .await;
        wait_for_metric(admin, "govbridge_calls_in_flight", |calls| calls == 0.0).await;
    }
}

/// Runs futures concurrently on this task and collects their outputs, in
/// order: for calls that borrow a bed, which cannot be spawned.
pub async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|future| Some(Box::pin(future))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------
// Server reflection, through the gateway.

/// What `grpc.health.v1.Health/Check` says of `service` to the caller
/// of `client`.
pub async fn health(
    client: H2Client,
    service: &str,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(client)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|response| response.into_inner().status())
}

/// Runs reflection requests over one stream and returns the answers, one
/// per request.
pub async fn reflect(
    client: H2Client,
    requests: Vec<tonic_reflection::pb::v1::server_reflection_request::MessageRequest>,
) -> Vec<tonic_reflection::pb::v1::server_reflection_response::MessageResponse> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let requests: Vec<ServerReflectionRequest> = requests
        .into_iter()
        .map(|message| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        })
        .collect();
    let count = requests.len();
    let mut stream = ServerReflectionClient::new(client)
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        answers.push(answer.message_response.unwrap());
    }
    assert_eq!(answers.len(), count);
    answers
}
