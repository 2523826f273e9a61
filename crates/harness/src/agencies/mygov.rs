//! The citizens' portal (MyGov): `govbridge.consent.v1.Consent`.
//!
//! Owns citizens' consents: it grants them on the citizen's behalf, signs
//! each as an artefact the consumer presents to the gateway, and publishes
//! every change of state on a feed the gateway follows. Only the portal's
//! app (`SN/GOV/MYGOV/app`) may grant and manage consents, and only the
//! gateway may follow the feed. Consents live in memory: a restart of the
//! mock forgets them, and the gateway, which follows the feed by sequence,
//! sees a new history.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Caller, nin_field};
use gateway::consent::artefact::{ConsentClaims, ConsentSigner};
use gateway::identity::MemberId;
use gateway::proto::consent::v1 as pb;
use pb::consent_server::{Consent, ConsentServer};

/// The member id of the citizens' portal app, the only client allowed to
/// manage consents.
pub const PORTAL_APP: &str = "SN/GOV/MYGOV/app";

/// The issuer named in artefacts: the portal's app.
pub fn portal_issuer() -> MemberId {
    match MemberId::parse(PORTAL_APP) {
        Ok(member) => member,
        Err(error) => unreachable!("{PORTAL_APP}: {error}"),
    }
}

/// How often the feed says it is alive when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Validity of a consent granted without an end.
const DEFAULT_VALIDITY: i64 = 90 * 86_400;

/// The portal's consent handlers.
#[derive(Debug, Clone)]
pub struct MyGovAgency {
    portal: Arc<Portal>,
}

#[derive(Debug)]
struct Portal {
    signer: Arc<ConsentSigner>,
    issuer: MemberId,
    gateway: MemberId,
    book: Mutex<Book>,
    /// The newest change's sequence, for feeds waiting for the next.
    latest: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Book {
    consents: HashMap<String, pb::ConsentRecord>,
    /// Every change, in order: `changes[i].sequence == i + 1`.
    changes: Vec<pb::StatusChange>,
}

impl MyGovAgency {
    /// A portal signing with `signer`, whose feed only `gateway` may follow.
    pub fn new(signer: Arc<ConsentSigner>, issuer: MemberId, gateway: MemberId) -> Self {
        let (latest, _) = watch::channel(0);
        Self {
            portal: Arc::new(Portal {
                signer,
                issuer,
                gateway,
                book: Mutex::new(Book::default()),
                latest,
            }),
        }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> ConsentServer<Self> {
        ConsentServer::new(self)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.portal
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets a consent's state, as its holder asks, and publishes the change.
    fn set_state(
        &self,
        request: &Request<pb::ConsentRef>,
        to: pb::ConsentState,
    ) -> Result<pb::ConsentRecord, Status> {
        portal_app_only(request)?;
        let wanted = request.get_ref();
        let nin = nin_field("nin", &wanted.nin)?;
        let mut book = self.book();
        let record = book
            .consents
            .get_mut(&wanted.consent_id)
            .filter(|record| record.nin == nin.as_str())
            .ok_or_else(|| Status::not_found("this citizen holds no consent with that id"))?;
        let from = record.state();
        let allowed = match to {
            pb::ConsentState::Paused => from == pb::ConsentState::Active,
            pb::ConsentState::Active => from == pb::ConsentState::Paused,
            pb::ConsentState::Revoked => from != pb::ConsentState::Revoked,
            pb::ConsentState::Unspecified => false,
        };
        if !allowed {
            return Err(Status::failed_precondition(format!(
                "the consent is {}; it cannot become {}",
                from.name(),
                to.name()
            )));
        }
        record.set_state(to);
        let record = record.clone();
        let sequence = book.changes.len() as u64 + 1;
        book.changes.push(pb::StatusChange {
            sequence,
            consent_id: record.consent_id.clone(),
            state: to.into(),
        });
        drop(book);
        self.portal.latest.send_replace(sequence);
        Ok(record)
    }
}

/// Refuses anyone but the portal's app.
fn portal_app_only<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller(member)) if member.as_str() == PORTAL_APP => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "only the citizens' portal ({PORTAL_APP}) manages consents"
        ))),
    }
}

/// The feed of state changes.
pub type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Consent for MyGovAgency {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        portal_app_only(&request)?;
        let grant = request.into_inner();
        let nin = nin_field("nin", &grant.nin)?;
        let consumer = MemberId::parse(&grant.consumer)
            .map_err(|error| Status::invalid_argument(format!("invalid consumer: {error}")))?;
        if grant.providers.is_empty() || grant.methods.is_empty() {
            return Err(Status::invalid_argument(
                "a consent names at least one provider and one method",
            ));
        }
        for provider in &grant.providers {
            MemberId::parse(provider).map_err(|error| {
                Status::invalid_argument(format!("invalid provider {provider:?}: {error}"))
            })?;
        }
        if let Some(method) = grant
            .methods
            .iter()
            .find(|method| gateway::catalog::split_path(method).is_none())
        {
            return Err(Status::invalid_argument(format!(
                "invalid method {method:?}: a gRPC path such as /package.Service/Method"
            )));
        }
        if grant.purpose.is_empty() {
            return Err(Status::invalid_argument("a consent names a purpose"));
        }
        let granted_at = gateway::unix_time::now();
        let not_before = if grant.not_before == 0 {
            granted_at
        } else {
            grant.not_before
        };
        let expires = if grant.expires == 0 {
            not_before.saturating_add(DEFAULT_VALIDITY)
        } else {
            grant.expires
        };
        if expires <= not_before {
            return Err(Status::invalid_argument(
                "the consent must expire after it starts",
            ));
        }
        let claims = ConsentClaims {
            consent_id: uuid::Uuid::new_v4().to_string(),
            subject: nin.as_str().to_owned(),
            consumer: consumer.to_string(),
            providers: grant.providers,
            methods: grant.methods,
            purpose: grant.purpose,
            not_before,
            expires,
            max_uses: grant.max_uses.max(1),
            issuer: self.portal.issuer.to_string(),
            issued_at: granted_at,
        };
        let record = pb::ConsentRecord {
            artefact: self.portal.signer.sign(&claims),
            consent_id: claims.consent_id,
            nin: claims.subject,
            consumer: claims.consumer,
            providers: claims.providers,
            methods: claims.methods,
            purpose: claims.purpose,
            not_before,
            expires,
            max_uses: claims.max_uses,
            state: pb::ConsentState::Active.into(),
            granted_at,
        };
        self.book()
            .consents
            .insert(record.consent_id.clone(), record.clone());
        tracing::debug!(consent_id = record.consent_id, "consent granted");
        Ok(Response::new(record))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        portal_app_only(&request)?;
        let nin = nin_field("nin", &request.get_ref().nin)?;
        let mut consents: Vec<pb::ConsentRecord> = self
            .book()
            .consents
            .values()
            .filter(|record| record.nin == nin.as_str())
            .cloned()
            .collect();
        consents.sort_by(|a, b| (b.granted_at, &b.consent_id).cmp(&(a.granted_at, &a.consent_id)));
        Ok(Response::new(pb::ListResponse { consents }))
    }

    async fn pause(
        &self,
        request: Request<pb::ConsentRef>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        self.set_state(&request, pb::ConsentState::Paused)
            .map(Response::new)
    }

    async fn resume(
        &self,
        request: Request<pb::ConsentRef>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        self.set_state(&request, pb::ConsentState::Active)
            .map(Response::new)
    }

    async fn revoke(
        &self,
        request: Request<pb::ConsentRef>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        self.set_state(&request, pb::ConsentState::Revoked)
            .map(Response::new)
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        request: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        match request.extensions().get::<Caller>() {
            Some(Caller(member)) if *member == self.portal.gateway => {}
            _ => {
                return Err(Status::permission_denied(
                    "only the gateway follows the consent feed",
                ));
            }
        }
        let after = request.get_ref().after_sequence;
        let agency = self.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move { agency.feed(after, sender).await });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

impl MyGovAgency {
    /// Sends every change after `after`, then each new one as it happens,
    /// with a heartbeat whenever a second passes without one; ends when the
    /// subscriber goes away.
    async fn feed(
        self,
        mut after: u64,
        sender: tokio::sync::mpsc::Sender<Result<pb::StatusEvent, Status>>,
    ) {
        let mut latest = self.portal.latest.subscribe();
        loop {
            let (pending, newest): (Vec<pb::StatusChange>, u64) = {
                let book = self.book();
                let start = usize::try_from(after).unwrap_or(usize::MAX);
                let pending = book.changes.get(start..).unwrap_or_default().to_vec();
                (pending, book.changes.len() as u64)
            };
            let event = |event| pb::StatusEvent { event: Some(event) };
            for change in pending {
                after = change.sequence;
                if sender
                    .send(Ok(event(pb::status_event::Event::Change(change))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // The portal's newest change, not the subscriber's: behind the
            // subscriber's own, it tells a gateway that the history started
            // again (this mock forgets everything when it restarts).
            let heartbeat = event(pb::status_event::Event::Heartbeat(pb::Heartbeat {
                latest_sequence: newest,
            }));
            if sender.send(Ok(heartbeat)).await.is_err() {
                return;
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = sender.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway that followed the portal before it restarted asks for the
    /// changes after its own cursor: the heartbeat must give the portal's
    /// newest change (none), so that the gateway reads the new history
    /// from the start instead of waiting past changes it will never see.
    #[tokio::test]
    async fn a_restarted_portal_tells_a_subscriber_ahead_of_it() {
        let signer = Arc::new(ConsentSigner::generate("mygov-test").expect("a signing key"));
        let gateway = MemberId::parse("SN/GOV/BRIDGE/gateway").expect("a member id");
        let portal = MyGovAgency::new(signer, portal_issuer(), gateway);
        let (sender, mut events) = tokio::sync::mpsc::channel(4);
        tokio::spawn(portal.feed(5, sender));
        let first = events
            .recv()
            .await
            .expect("an event")
            .expect("not an error");
        assert_eq!(
            first.event,
            Some(pb::status_event::Event::Heartbeat(pb::Heartbeat {
                latest_sequence: 0
            }))
        );
    }
}
