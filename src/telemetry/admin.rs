//! The admin endpoint: plain HTTP/1.1 on a separate address (loopback in
//! the dev configuration), for operators and their tools.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when calls can be served, else 503 with the reasons |
//! | `GET /metrics` | Prometheus text |
//! | `GET /config` | the effective configuration as JSON (paths, never key material) |
//! | `POST /reload` | reloads the configuration; 200, or 422 with the error |

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::{LogGauges, Metrics};
use crate::audit::ExchangeLog;
use crate::proxy::{GatewayState, Reloader};

/// What the admin endpoint reads and acts on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub log: Option<ExchangeLog>,
    pub state: Arc<arc_swap::ArcSwap<GatewayState>>,
    pub reloader: Reloader,
    pub listener: Arc<crate::net::ListenerStats>,
}

impl Admin {
    /// Serves `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let accept = async {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.answer(request).await) }
                    });
                    // A client that never finishes its request is dropped.
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "admin connection ended");
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
            (&Method::GET, "/readyz") => {
                let problems = self.readiness().await;
                if problems.is_empty() {
                    text(StatusCode::OK, "ready\n".to_owned())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n- {}\n", problems.join("\n- ")),
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let log = self.log.as_ref().map(|log| LogGauges {
                    records: log.size(),
                    queued: log.queued(),
                    writable: log.is_healthy(),
                    commits: log.commit_durations(),
                });
                let state = self.state.load();
                let mut rendered =
                    self.metrics
                        .render(log, state.certificates(), state.crls(), &self.listener);
                render_endpoints(&mut rendered, &state);
                let mut response = text(StatusCode::OK, rendered);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/config") => {
                let mut response = text(StatusCode::OK, self.state.load().describe());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            (&Method::POST, "/reload") => {
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(())) => text(StatusCode::OK, "reloaded\n".to_owned()),
                    Ok(Err(error)) => text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload rejected, the running configuration stays: {error}\n"),
                    ),
                    Err(error) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reload failed to run: {error}\n"),
                    ),
                }
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "routes: GET /healthz /readyz /metrics /config, POST /reload\n".to_owned(),
            ),
        }
    }

    /// Why calls cannot be served now; empty when they can.
    async fn readiness(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listener.draining() {
            problems.push("shutting down: open calls are finishing, no new ones".to_owned());
        }
        if let Some(log) = &self.log
            && !log.is_healthy()
        {
            problems.push("the exchange log cannot write: every call is refused".to_owned());
        }
        let state = self.state.load_full();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        for (name, not_after) in state.certificates() {
            if *not_after <= now {
                problems.push(format!("{name} has expired"));
            }
        }
        for service in state.services().keys() {
            let Some(pools) = state.service_pools(service) else {
                continue;
            };
            let mut reachable = false;
            for pool in pools {
                if pool.reachable().await {
                    reachable = true;
                    break;
                }
            }
            if !reachable {
                problems.push(format!("no provider of {service} is reachable"));
            }
        }
        problems
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The gauges and counters of each backend endpoint, read from the pools
/// of the current configuration.
fn render_endpoints(out: &mut String, state: &crate::proxy::GatewayState) {
    use std::fmt::Write as _;
    let mut pools: Vec<_> = state.pools().collect();
    pools.sort_by(|a, b| a.provider().cmp(b.provider()));
    let series = [
        (
            "govbridge_upstream_endpoint_in_rotation",
            "gauge",
            "1 while a backend endpoint takes calls: neither ejected nor failing health checks.",
        ),
        (
            "govbridge_upstream_endpoint_outstanding",
            "gauge",
            "Calls in flight to a backend endpoint.",
        ),
        (
            "govbridge_upstream_endpoint_connections",
            "gauge",
            "Open HTTP/2 connections to a backend endpoint.",
        ),
        (
            "govbridge_upstream_endpoint_ejections_total",
            "counter",
            "Times a backend endpoint was ejected after failed calls in a row.",
        ),
    ];
    let _ = writeln!(
        out,
        "# HELP govbridge_upstream_retries_total Idempotent calls retried on another endpoint."
    );
    let _ = writeln!(out, "# TYPE govbridge_upstream_retries_total counter");
    for pool in &pools {
        let _ = writeln!(
            out,
            "govbridge_upstream_retries_total{{provider=\"{}\"}} {}",
            pool.provider(),
            pool.retries()
        );
    }
    for (index, (name, kind, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for pool in &pools {
            for endpoint in pool.endpoint_states() {
                let value = match index {
                    0 => u64::from(endpoint.in_rotation),
                    1 => endpoint.outstanding as u64,
                    2 => endpoint.connections as u64,
                    _ => endpoint.ejections,
                };
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",endpoint=\"{}\"}} {value}",
                    pool.provider(),
                    endpoint.address
                );
            }
        }
    }
}
