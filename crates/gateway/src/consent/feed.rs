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
#[derive(Debug, Clone)]
pub struct FeedSource {
    /// The portal's backends, tried in turn.
    pub endpoints: Vec<Endpoint>,
    pub tls: Arc<ClientConfig>,
    /// The gateway's own member id, sent in `bridge-client`.
    pub gateway: MemberId,
    /// The portal's member id: its backends must prove it, or a backend of
    /// anyone else at that address could tell the gateway what is revoked.
    pub provider: MemberId,
}

/// Longest wait between two attempts to reach the feed.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows the feed until the task is dropped.
pub async fn follow(ledger: Arc<ConsentLedger>, source: FeedSource) {
    let mut backoff = Duration::from_millis(50);
    let mut down = false;
    loop {
        for endpoint in &source.endpoints {
            match follow_endpoint(&ledger, &source, endpoint).await {
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
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if down && ledger.is_fresh() {
            down = false;
        }
    }
}

/// Follows one endpoint's feed until it fails or goes quiet.
async fn follow_endpoint(
    ledger: &ConsentLedger,
    source: &FeedSource,
    endpoint: &Endpoint,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let address = tokio::net::lookup_host(endpoint.address.as_str())
        .await?
        .next()
        .ok_or("the address resolves to nothing")?;
    let channel = Channel::connect_to_member(
        address,
        &endpoint.server_name.to_str(),
        source.tls.clone(),
        &source.provider,
    )
    .await?;
    let mut request = tonic::Request::new(pb::WatchStatusRequest {
        after_sequence: ledger.sequence(),
    });
    request.metadata_mut().insert(
        crate::wire::headers::BRIDGE_CLIENT,
        source.gateway.as_str().parse()?,
    );
    let mut events = ConsentClient::new(channel)
        .watch_status(request)
        .await?
        .into_inner();
    tracing::info!(endpoint = endpoint.address, "following the consent feed");
    let quiet = ledger.freshness;
    loop {
        let Some(event) = tokio::time::timeout(quiet, events.message())
            .await
            .map_err(|_| "the feed went quiet")??
        else {
            return Err("the feed ended".into());
        };
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
