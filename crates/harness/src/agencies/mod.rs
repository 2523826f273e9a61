//! Mock agencies: the civil registry (ANEC), the tax authority (DGID), the
//! business registry (APIX) and the account verification service of two
//! banks (CBAO, Ecobank), all served from one synthetic [`Dataset`].
//!
//! This module owns what the agencies have in common: their names and
//! member ids, the guard that admits calls only from the gateway (and reads
//! the caller the gateway vouches for), the one mapping from agency errors
//! to gRPC statuses, and [`service`], which assembles an agency's stack:
//!
//! ```text
//! http request -> note the RPC path -> GatewayOnly (peer = gateway?
//!   bridge-client = member id? -> Caller) -> tonic server (16 MiB limits)
//!   -> agency handler -> Dataset
//! ```
//!
//! The agencies are test doubles: they must never hold real personal data,
//! never accept a call that did not come through the gateway, and never log
//! personal data (no NIN, name or amount in any log line).

pub mod azerbaijan;
pub mod aztax;
pub mod bank;
pub mod business;
pub mod calendar;
pub mod civil_registry;
pub mod config;
pub mod dataset;
pub mod fault;
mod health;

pub mod mygov;
pub mod tables;
pub mod tax;

#[cfg(test)]
mod service_tests;

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hyper::body::Incoming;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use gateway::consent::artefact::ConsentSigner;
use gateway::identity::MemberId;
use gateway::net::PeerInfo;
use gateway::wire::escape::Escaped;
use gateway::wire::headers::{BRIDGE_CLIENT, BRIDGE_REQUEST_ID, TRACEPARENT};

pub use dataset::Dataset;
pub use gateway::identity::national::{
    Iban, InvalidIban, InvalidNin, InvalidNinea, Nin, Ninea, parse_iban, parse_nin, parse_ninea,
};

/// One mock agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agency {
    CivilRegistry,
    Tax,
    BusinessRegistry,
    Bank(Bank),
    /// The citizens' portal, keeper of consents.
    MyGov,
    /// Azerbaijan's company registry: served by the partner instance of
    /// `govbridge dev --federation`, not by the Senegalese dev instance
    /// (not in [`Agency::ALL`]).
    AzCompanyRegistry,
    /// Azerbaijan's tax service, likewise.
    AzTaxService,
}

/// A demo bank offering account verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bank {
    Cbao,
    Ecobank,
}

impl Bank {
    /// Both demo banks.
    pub const ALL: [Bank; 2] = [Bank::Cbao, Bank::Ecobank];

    /// The bank code that starts the BBAN of its IBANs (a demo value).
    pub fn bank_code(self) -> &'static str {
        match self {
            Bank::Cbao => "SN012",
            Bank::Ecobank => "SN094",
        }
    }

    /// The bank's commercial name.
    pub fn display_name(self) -> &'static str {
        match self {
            Bank::Cbao => "CBAO Groupe Attijariwafa bank",
            Bank::Ecobank => "Ecobank Sénégal",
        }
    }
}

impl Agency {
    /// Every agency, in a fixed order.
    pub const ALL: [Agency; 6] = [
        Agency::CivilRegistry,
        Agency::Tax,
        Agency::BusinessRegistry,
        Agency::Bank(Bank::Cbao),
        Agency::Bank(Bank::Ecobank),
        Agency::MyGov,
    ];

    /// Short name, as used on the command line and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Agency::CivilRegistry => "civil-registry",
            Agency::Tax => "tax",
            Agency::BusinessRegistry => "business-registry",
            Agency::Bank(Bank::Cbao) => "bank-cbao",
            Agency::Bank(Bank::Ecobank) => "bank-ecobank",
            Agency::MyGov => "mygov",
            Agency::AzCompanyRegistry => "az-company-registry",
            Agency::AzTaxService => "az-tax-service",
        }
    }

    /// The member id (and certificate identity) of the agency's server.
    pub fn member_id(self) -> MemberId {
        let text = match self {
            Agency::CivilRegistry => "SN/GOV/ANEC/civil-registry",
            Agency::Tax => "SN/GOV/DGID/tax",
            Agency::BusinessRegistry => "SN/GOV/APIX/business-registry",
            Agency::Bank(Bank::Cbao) => "SN/COM/CBAO/accounts",
            Agency::Bank(Bank::Ecobank) => "SN/COM/ECOBANK/accounts",
            Agency::MyGov => "SN/GOV/MYGOV/consent",
            Agency::AzCompanyRegistry => "AZ/GOV/ASAN/business-registry",
            Agency::AzTaxService => "AZ/GOV/VERGI/tax-authority",
        };
        match MemberId::parse(text) {
            Ok(member) => member,
            // The literals above are valid member ids (see the tests).
            Err(error) => unreachable!("{text}: {error}"),
        }
    }

    /// The full name of the gRPC service the agency serves.
    pub fn service_name(self) -> &'static str {
        match self {
            Agency::CivilRegistry => "govbridge.civilregistry.v1.CivilRegistry",
            Agency::Tax => "govbridge.tax.v1.TaxAuthority",
            Agency::BusinessRegistry => "govbridge.business.v1.BusinessRegistry",
            Agency::Bank(_) => "govbridge.bank.v1.AccountVerification",
            Agency::MyGov => "govbridge.consent.v1.Consent",
            Agency::AzCompanyRegistry => "govbridge.azbusiness.v1.CompanyRegistry",
            Agency::AzTaxService => "govbridge.aztax.v1.TaxService",
        }
    }
}

impl fmt::Display for Agency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`Agency::name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown agency {name:?}; the agencies are {}", known_agency_names())]
pub struct UnknownAgency {
    pub name: String,
}

fn known_agency_names() -> String {
    Agency::ALL.map(Agency::name).join(", ")
}

impl FromStr for Agency {
    type Err = UnknownAgency;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Agency::ALL
            .into_iter()
            .find(|agency| agency.name() == name)
            .ok_or_else(|| UnknownAgency {
                name: name.to_owned(),
            })
    }
}

/// The member on whose behalf the gateway forwards a call, from the
/// `bridge-client` header. Present in the extensions of every request that
/// reaches an agency handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub MemberId);

/// An agency as a service for the TLS listener.
pub type AgencyService =
    BoxCloneSyncService<http::Request<Incoming>, http::Response<tonic::body::Body>, Infallible>;

/// Largest message an agency decodes or encodes.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The agency's gRPC service, accepting calls only from `gateway`. MyGov
/// signs consents with `signer`; without one it signs with a key of its
/// own that no gateway trusts.
pub fn service(
    agency: Agency,
    data: Arc<Dataset>,
    gateway: MemberId,
    signer: Option<Arc<ConsentSigner>>,
) -> AgencyService {
    let guard = GatewayOnly {
        agency,
        gateway: gateway.clone(),
    };
    let service = match agency {
        Agency::CivilRegistry => assemble(
            civil_registry::CivilRegistryAgency::new(data)
                .into_server()
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::Tax => assemble(
            tax::TaxAgency::new(data)
                .into_server()
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::BusinessRegistry => assemble(
            business::BusinessRegistryAgency::new(data)
                .into_server()
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::AzCompanyRegistry => assemble(
            azerbaijan::CompanyRegistryAgency::new(Arc::new(azerbaijan::Registry::generate(
                data.seed,
            )))
            .into_server()
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::AzTaxService => assemble(
            aztax::TaxServiceAgency::new(Arc::new(azerbaijan::Registry::generate(data.seed)))
                .into_server()
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::Bank(which) => assemble(
            bank::BankAgency::new(which, data)
                .into_server()
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            guard,
        ),
        Agency::MyGov => {
            let signer = signer
                .or_else(|| ConsentSigner::generate("untrusted").ok().map(Arc::new))
                .unwrap_or_else(|| unreachable!("Ed25519 key generation does not fail"));
            assemble(
                mygov::MyGovAgency::new(signer, mygov::portal_issuer(), gateway)
                    .into_server()
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
                guard,
            )
        }
    };
    with_health(service, agency.service_name())
}

/// `service`, with `grpc.health.v1.Health` beside it (outside the gateway
/// guard: the gateway's health checks name no caller).
fn with_health(service: AgencyService, name: &'static str) -> AgencyService {
    let health = health::AgencyHealth::server(name);
    let routed = tower::service_fn(move |request: http::Request<Incoming>| {
        let service = service.clone();
        let health = health.clone();
        async move {
            if request.uri().path().starts_with(health::PATH) {
                let response = health.oneshot(request).await;
                Ok(response
                    .unwrap_or_else(|never| match never {})
                    .map(tonic::body::Body::new))
            } else {
                service.oneshot(request).await
            }
        }
    });
    AgencyService::new(routed)
}

/// Wraps a generated tonic server in the gateway guard, outermost first.
fn assemble<S>(server: S, guard: GatewayOnly) -> AgencyService
where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let stack = InterceptedService::new(server, guard)
        .map_request(|mut request: http::Request<Incoming>| {
            // Tonic interceptors do not see the URI; keep the method name
            // for the call log.
            let method = RpcPath(request.uri().path().to_owned());
            request.extensions_mut().insert(method);
            request
        })
        .map_response(|response: http::Response<_>| response.map(tonic::body::Body::new));
    BoxCloneSyncService::new(stack)
}

/// The request's `/package.Service/Method` path.
#[derive(Debug, Clone)]
struct RpcPath(String);

/// Admits a call only when the TLS peer is the gateway, and only with the
/// caller the gateway names in `bridge-client`.
#[derive(Debug, Clone)]
struct GatewayOnly {
    agency: Agency,
    gateway: MemberId,
}

/// Why a call was refused before reaching an agency handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRefused {
    /// The TLS peer is not the gateway (or unknown): the caller's fault,
    /// never worth retrying.
    #[error("this agency accepts calls only from the gateway {gateway}")]
    NotFromGateway { gateway: MemberId },
    /// The gateway did not say whom it forwards for.
    #[error("the bridge-client header naming the calling member is missing")]
    MissingClient,
    /// The gateway named the caller in a form that is not a member id.
    #[error("the bridge-client header is not a member id: {reason}")]
    InvalidClient { reason: String },
}

impl From<CallRefused> for Status {
    fn from(refused: CallRefused) -> Status {
        match refused {
            CallRefused::NotFromGateway { .. } => Status::permission_denied(refused.to_string()),
            CallRefused::MissingClient | CallRefused::InvalidClient { .. } => {
                Status::unauthenticated(refused.to_string())
            }
        }
    }
}

impl GatewayOnly {
    fn admit(&self, request: &Request<()>) -> Result<MemberId, CallRefused> {
        let from_gateway = request
            .extensions()
            .get::<PeerInfo>()
            .is_some_and(|peer| matches!(&peer.member, Ok(member) if *member == self.gateway));
        if !from_gateway {
            return Err(CallRefused::NotFromGateway {
                gateway: self.gateway.clone(),
            });
        }
        let header = request
            .metadata()
            .get(BRIDGE_CLIENT)
            .ok_or(CallRefused::MissingClient)?;
        let text = header.to_str().map_err(|_| CallRefused::InvalidClient {
            reason: "it is not visible ASCII".to_owned(),
        })?;
        MemberId::parse(text).map_err(|error| CallRefused::InvalidClient {
            reason: error.to_string(),
        })
    }
}

impl Interceptor for GatewayOnly {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let method = request
            .extensions()
            .get::<RpcPath>()
            .map_or_else(String::new, |path| path.0.clone());
        match self.admit(&request) {
            Ok(caller) => {
                // The agency's hop continues the caller's trace: its events
                // carry the trace id the gateway forwarded.
                let trace_id = request
                    .metadata()
                    .get(TRACEPARENT)
                    .and_then(|value| value.to_str().ok()?.get(3..35))
                    .unwrap_or_default();
                let request_id = request
                    .metadata()
                    .get(BRIDGE_REQUEST_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default();
                tracing::debug!(
                    agency = self.agency.name(),
                    method = %Escaped(&method),
                    %caller,
                    trace_id,
                    request_id,
                    "agency call"
                );
                request.extensions_mut().insert(Caller(caller));
                Ok(request)
            }
            Err(refused) => {
                tracing::debug!(
                    agency = self.agency.name(),
                    method = %Escaped(&method),
                    refused = %Escaped(&refused),
                    "agency call refused"
                );
                Err(refused.into())
            }
        }
    }
}

/// Why an agency handler could not answer. Turned into a gRPC status in
/// one place, `From<AgencyError> for Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgencyError {
    /// A request field is malformed: the caller's fault; the message names
    /// the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The field is well formed but names no record.
    #[error("{0}")]
    NotFound(&'static str),
}

impl AgencyError {
    /// A malformed `field`.
    pub fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.to_string(),
        }
    }
}

impl From<AgencyError> for Status {
    fn from(error: AgencyError) -> Status {
        match error {
            AgencyError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            AgencyError::NotFound(_) => Status::not_found(error.to_string()),
        }
    }
}

/// Parses the NIN in request field `field`.
fn nin_field(field: &'static str, text: &str) -> Result<Nin, AgencyError> {
    parse_nin(text).map_err(|error| AgencyError::invalid(field, error))
}

/// Parses the NINEA in request field `field`.
fn ninea_field(field: &'static str, text: &str) -> Result<Ninea, AgencyError> {
    parse_ninea(text).map_err(|error| AgencyError::invalid(field, error))
}

/// Parses the IBAN in request field `field`.
fn iban_field(field: &'static str, text: &str) -> Result<Iban, AgencyError> {
    parse_iban(text).map_err(|error| AgencyError::invalid(field, error))
}

/// Parses the `YYYY-MM-DD` date in request field `field`.
fn date_field(field: &'static str, text: &str) -> Result<calendar::Date, AgencyError> {
    calendar::Date::parse(text).map_err(|error| AgencyError::invalid(field, error))
}

/// Formats an optional value for a proto string field: empty when absent.
fn or_empty<T: fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::server::NamedService;

    #[test]
    fn names_round_trip_and_ids_are_valid() {
        for agency in Agency::ALL {
            assert_eq!(agency.name().parse::<Agency>(), Ok(agency));
            assert_eq!(
                agency.member_id().to_string().parse::<MemberId>(),
                Ok(agency.member_id())
            );
        }
        let error = "bank-sgbs".parse::<Agency>().unwrap_err();
        assert!(
            error
                .to_string()
                .contains("civil-registry, tax, business-registry, bank-cbao, bank-ecobank")
        );
        assert_eq!(
            Agency::Bank(Bank::Ecobank).member_id().as_str(),
            "SN/COM/ECOBANK/accounts"
        );
    }

    #[test]
    fn service_names_match_the_generated_servers() {
        use gateway::proto::{bank::v1 as bank_pb, business::v1 as business_pb};
        use gateway::proto::{civilregistry::v1 as civil_pb, tax::v1 as tax_pb};
        type Civil = civil_pb::civil_registry_server::CivilRegistryServer<
            civil_registry::CivilRegistryAgency,
        >;
        type Tax = tax_pb::tax_authority_server::TaxAuthorityServer<tax::TaxAgency>;
        type Business = business_pb::business_registry_server::BusinessRegistryServer<
            business::BusinessRegistryAgency,
        >;
        type Accounts =
            bank_pb::account_verification_server::AccountVerificationServer<bank::BankAgency>;
        assert_eq!(
            Agency::CivilRegistry.service_name(),
            <Civil as NamedService>::NAME
        );
        assert_eq!(Agency::Tax.service_name(), <Tax as NamedService>::NAME);
        assert_eq!(
            Agency::BusinessRegistry.service_name(),
            <Business as NamedService>::NAME
        );
        assert_eq!(
            Agency::Bank(Bank::Cbao).service_name(),
            <Accounts as NamedService>::NAME
        );
    }

    fn guard() -> GatewayOnly {
        GatewayOnly {
            agency: Agency::Tax,
            gateway: MemberId::parse("SN/GOV/SENUM/gateway").unwrap(),
        }
    }

    fn request(peer: Option<&str>, client: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(peer) = peer {
            request.extensions_mut().insert(PeerInfo {
                remote_addr: ([127, 0, 0, 1], 4000).into(),
                member: Ok(MemberId::parse(peer).unwrap()),
                key_exchange: None,
                certificate_not_after: None,
                control: Default::default(),
            });
        }
        if let Some(client) = client {
            request
                .metadata_mut()
                .insert(BRIDGE_CLIENT, client.parse().unwrap());
        }
        request
    }

    #[test]
    fn guard_admits_only_the_gateway_with_a_named_caller() {
        let mut guard = guard();
        let admitted = guard
            .call(request(
                Some("SN/GOV/SENUM/gateway"),
                Some("SN/COM/CBAO/kyc"),
            ))
            .unwrap();
        assert_eq!(
            admitted.extensions().get::<Caller>(),
            Some(&Caller(MemberId::parse("SN/COM/CBAO/kyc").unwrap()))
        );

        let status = guard
            .call(request(None, Some("SN/COM/CBAO/kyc")))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("SN/GOV/SENUM/gateway"));
        let status = guard
            .call(request(Some("SN/COM/CBAO/kyc"), Some("SN/COM/CBAO/kyc")))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        let status = guard
            .call(request(Some("SN/GOV/SENUM/gateway"), None))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("bridge-client"));
        let status = guard
            .call(request(Some("SN/GOV/SENUM/gateway"), Some("not a member")))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn agency_errors_map_to_statuses() {
        let status = Status::from(nin_field("nin", "12").unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("invalid nin: "),
            "{}",
            status.message()
        );
        let status = Status::from(AgencyError::NotFound("no person holds this NIN"));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
