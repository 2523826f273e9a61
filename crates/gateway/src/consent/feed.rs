//! Follows the consent portal's feed of state changes
//! (`govbridge.consent.v1.Consent/WatchStatus`) into the [`ConsentLedger`].
//!
//! The gateway calls the portal's backend itself, as it calls any backend:
//! over mutual TLS with its upstream certificate, naming itself in
//! `bridge-client`. The feed resumes after the last change applied; a feed
//! that goes quiet for longer than the freshness window is dropped and
//! dialled again, and meanwhile the ledger refuses consent-bound calls. So
//! it does after a start, until a heartbeat says the portal has no change
//! the ledger has not applied.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::{ConsentLedger, ConsentState};
use crate::config::Endpoint;
use crate::identity::MemberId;
use crate::net::client::Channel;
use crate::proto::consent::v1 as pb;
use pb::consent_client::ConsentClient;

/// Where the feed comes from.
pub struct FeedSource {
    /// The gateway's own member id, sent in `bridge-client`.
    pub gateway: MemberId,
    /// How to reach the portal under the configuration in use, asked
    /// again at each dial: a reload's certificate, CRLs or endpoints are
    /// the feed's too.
    pub route: Box<dyn Fn() -> Option<Arc<FeedRoute>> + Send + Sync>,
}

impl std::fmt::Debug for FeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSource")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

/// How to reach the portal under one configuration.
#[derive(Debug)]
pub struct FeedRoute {
    /// The portal's member id: its backends must prove it, or a backend of
    /// anyone else at that address could tell the gateway what is revoked.
    /// The one the gateway started with (`consent.feed_provider` takes
    /// effect at restart, as the ledger it feeds).
    pub provider: MemberId,
    /// The portal's backends, tried in turn.
    pub endpoints: Vec<Endpoint>,
    /// This instance's upstream TLS: the gateway's certificate, the
    /// backends' CAs and CRLs.
    pub tls: Arc<ClientConfig>,
    /// The last second (since the epoch) the upstream CRLs are accepted
    /// in: a stream still open then is dropped, as any connection to a
    /// backend is, and dialled again once fresh CRLs are loaded.
    pub crls_stale_after: Option<i64>,
}

/// Longest wait between two attempts to reach the feed.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often an open feed looks whether the configuration it was dialled
/// under still holds (a reload, CRLs going out of date).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Follows the feed until the task is dropped.
pub async fn follow(ledger: Arc<ConsentLedger>, source: FeedSource) {
    let mut backoff = Duration::from_millis(50);
    let mut down = false;
    'routes: loop {
        let Some(route) = (source.route)() else {
            return;
        };
        for endpoint in &route.endpoints {
            match follow_endpoint(&ledger, &source, &route, endpoint).await {
                Ok(()) => {}
                Err(error) if !down => {
                    down = true;
                    tracing::warn!(
                        endpoint = endpoint.address,
                        %error,
                        "consent feed lost; consent-bound calls are refused once it has been \
                         silent for the freshness window"
                    );
                }
                Err(error) => {
                    tracing::debug!(endpoint = endpoint.address, %error, "consent feed still down");
                }
            }
            if ledger.is_fresh() {
                // It was up: try again at once.
                backoff = Duration::from_millis(50);
            }
            // A reload's TLS and endpoints are taken at once: the next
            // endpoint is not dialled with the TLS it replaced.
            if reloaded(&source, &route) {
                continue 'routes;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if down && ledger.is_fresh() {
            down = false;
        }
    }
}

/// Whether the configuration in use reaches the portal otherwise than
/// `route` does: other TLS or other endpoints (a reload of anything else
/// builds a route of its own too).
fn reloaded(source: &FeedSource, route: &FeedRoute) -> bool {
    (source.route)().is_some_and(|current| {
        !Arc::ptr_eq(&current.tls, &route.tls) || current.endpoints != route.endpoints
    })
}

/// Follows one endpoint's feed until it fails or goes quiet.
async fn follow_endpoint(
    ledger: &ConsentLedger,
    source: &FeedSource,
    route: &Arc<FeedRoute>,
    endpoint: &Endpoint,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let quiet = ledger.freshness;
    // An endpoint that takes the connection and never answers (a hung
    // process, a balancer with a dead backend) is left for the next one
    // while the ledger is still fresh, not waited for forever: the dial
    // within half the freshness window, the feed's first answer within
    // the window an open feed gets between two.
    let dial = async {
        let address = tokio::net::lookup_host(endpoint.address.as_str())
            .await?
            .next()
            .ok_or("the address resolves to nothing")?;
        Channel::connect_to_member(
            address,
            &endpoint.server_name.to_str(),
            Arc::clone(&route.tls),
            &route.provider,
        )
        .await
    };
    let channel = tokio::time::timeout(quiet / 2, dial)
        .await
        .map_err(|_| format!("no connection within {:?}", quiet / 2))??;
    let mut request = tonic::Request::new(pb::WatchStatusRequest {
        after_sequence: ledger.sequence(),
    });
    request.metadata_mut().insert(
        crate::wire::headers::BRIDGE_CLIENT,
        source.gateway.as_str().parse()?,
    );
    let mut events = tokio::time::timeout(quiet, ConsentClient::new(channel).watch_status(request))
        .await
        .map_err(|_| format!("the feed did not answer within {quiet:?}"))??
        .into_inner();
    tracing::info!(endpoint = endpoint.address, "following the consent feed");
    let mut heard = tokio::time::Instant::now();
    let mut look_at = heard + LOOK_EVERY;
    loop {
        let event = tokio::select! {
            event = events.message() => event?,
            () = tokio::time::sleep_until(look_at.min(heard + quiet)) => {
                if heard.elapsed() >= quiet {
                    return Err("the feed went quiet".into());
                }
                if (source.route)().is_some_and(|current| !Arc::ptr_eq(&current.tls, &route.tls)) {
                    tracing::info!(
                        endpoint = endpoint.address,
                        "the upstream TLS was reloaded: dialling the consent feed again"
                    );
                    return Ok(());
                }
                if route
                    .crls_stale_after
                    .is_some_and(|after| crate::unix_time::now() > after)
                {
                    return Err("the upstream CRLs are out of date".into());
                }
                look_at = tokio::time::Instant::now() + LOOK_EVERY;
                continue;
            }
        };
        let Some(event) = event else {
            return Err("the feed ended".into());
        };
        heard = tokio::time::Instant::now();
        match event.event {
            Some(pb::status_event::Event::Change(change)) => {
                let state = match change.state() {
                    pb::ConsentState::Active => ConsentState::Active,
                    pb::ConsentState::Paused => ConsentState::Paused,
                    pb::ConsentState::Revoked => ConsentState::Revoked,
                    // Unknown news about a consent: assume the worst.
                    pb::ConsentState::Unspecified => ConsentState::Revoked,
                };
                tracing::debug!(
                    consent_id = change.consent_id,
                    ?state,
                    "consent state changed"
                );
                ledger.apply(change.sequence, &change.consent_id, state);
            }
            Some(pb::status_event::Event::Heartbeat(heartbeat))
                if heartbeat.latest_sequence < ledger.sequence() =>
            {
                // The portal's history restarted: read it again from the
                // start, or its new changes would be skipped.
                ledger.rewind();
                return Err("the portal's feed restarted its history".into());
            }
            Some(pb::status_event::Event::Heartbeat(heartbeat)) => {
                ledger.heartbeat(heartbeat.latest_sequence);
            }
            None => ledger.heard(),
        }
    }
}
