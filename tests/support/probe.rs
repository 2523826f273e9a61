//! A civil registry backend under test control: it records what reached it,
//! can be slow, can stream large events, and reports cancellations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use govbridge::agencies::AgencyService;
use govbridge::identity::MemberId;
use govbridge::net::PeerInfo;
use govbridge::proto::civilregistry::v1::civil_registry_server::{
    CivilRegistry, CivilRegistryServer,
};
use govbridge::proto::civilregistry::v1::{
    GetPersonRequest, GetPersonResponse, LifeEvent, Person, Place, VerifyIdentityRequest,
    VerifyIdentityResponse, WatchLifeEventsRequest,
};
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub const SERVICE: &str = "govbridge.civilregistry.v1.CivilRegistry";

/// What one request looked like on arrival.
#[derive(Debug, Clone)]
pub struct Seen {
    pub metadata: MetadataMap,
    pub peer: Option<MemberId>,
    /// The gateway's end of the upstream connection.
    pub remote_addr: Option<std::net::SocketAddr>,
    pub key_exchange: Option<rustls::NamedGroup>,
}

#[derive(Debug, Default)]
pub struct ProbeState {
    pub seen: Mutex<Vec<Seen>>,
    /// Notified each time a request arrives.
    pub arrived: Notify,
    /// Set when a slow call was dropped before it finished.
    pub cancelled: Notify,
    /// Stream messages handed to the transport so far.
    pub produced: AtomicU64,
    latency: Duration,
    event_padding: usize,
}

/// The probe: cheap to clone, all clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub state: Arc<ProbeState>,
}

impl Probe {
    pub fn new(latency: Duration, event_padding: usize) -> Self {
        Self {
            state: Arc::new(ProbeState {
                latency,
                event_padding,
                ..ProbeState::default()
            }),
        }
    }

    pub fn server(&self) -> AgencyService {
        AgencyService::new(
            CivilRegistryServer::new(self.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn produced(&self) -> u64 {
        self.state.produced.load(Ordering::SeqCst)
    }

    fn record<T>(&self, request: &Request<T>) {
        let peer = request.extensions().get::<PeerInfo>();
        self.state.seen.lock().unwrap().push(Seen {
            metadata: request.metadata().clone(),
            peer: peer.and_then(|peer| peer.member.clone().ok()),
            remote_addr: peer.map(|peer| peer.remote_addr),
            key_exchange: peer.and_then(|peer| peer.key_exchange),
        });
        self.state.arrived.notify_one();
    }
}

/// Notifies `cancelled` if dropped before `finish`.
struct CancelGuard(Option<Arc<ProbeState>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.cancelled.notify_one();
        }
    }
}

#[tonic::async_trait]
impl CivilRegistry for Probe {
    async fn get_person(
        &self,
        request: Request<GetPersonRequest>,
    ) -> Result<Response<GetPersonResponse>, Status> {
        self.record(&request);
        if !self.state.latency.is_zero() {
            let mut guard = CancelGuard(Some(self.state.clone()));
            tokio::time::sleep(self.state.latency).await;
            guard.0 = None;
        }
        // Echo the NIN back in another field: tests send large ones.
        let nin = request.into_inner().nin;
        Ok(Response::new(GetPersonResponse {
            person: Some(Person {
                nin: "probe".to_owned(),
                first_names: nin,
                ..Person::default()
            }),
        }))
    }

    async fn verify_identity(
        &self,
        request: Request<VerifyIdentityRequest>,
    ) -> Result<Response<VerifyIdentityResponse>, Status> {
        self.record(&request);
        Err(Status::failed_precondition("the probe verifies nobody"))
    }

    type WatchLifeEventsStream = ReceiverStream<Result<LifeEvent, Status>>;

    async fn watch_life_events(
        &self,
        request: Request<WatchLifeEventsRequest>,
    ) -> Result<Response<Self::WatchLifeEventsStream>, Status> {
        self.record(&request);
        // `max_events: 0` streams without end, one event every 10 ms, and
        // reports the cancellation that ends it.
        let count = match request.into_inner().max_events {
            0 => u64::MAX,
            count => u64::from(count),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let state = self.state.clone();
        let padding = "x".repeat(state.event_padding);
        tokio::spawn(async move {
            for sequence in 1..=count {
                let event = LifeEvent {
                    sequence,
                    place: Some(Place {
                        commune: padding.clone(),
                        ..Place::default()
                    }),
                    ..LifeEvent::default()
                };
                if count == u64::MAX {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if sender.send(Ok(event)).await.is_err() {
                    state.cancelled.notify_one();
                    return;
                }
                state.produced.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
