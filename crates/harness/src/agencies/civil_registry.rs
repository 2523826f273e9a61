//! The civil registry agency (ANEC): `govbridge.civilregistry.v1`.
//!
//! Owns the mapping from the dataset's citizens and journal to the civil
//! registry protos, and the identity check. `VerifyIdentity` must never
//! reveal a recorded value, only whether the presented ones match; no
//! handler logs personal data.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::dataset::{self, Citizen, Dataset, LifeEventKind, MaritalStatus, Sex};
use super::tables::Commune;
use super::{AgencyError, date_field, nin_field, or_empty};
use gateway::proto::civilregistry::v1 as pb;
use pb::civil_registry_server::{CivilRegistry, CivilRegistryServer};

/// The civil registry's handlers.
#[derive(Debug, Clone)]
pub struct CivilRegistryAgency {
    data: Arc<Dataset>,
}

impl CivilRegistryAgency {
    /// The registry over `data`.
    pub fn new(data: Arc<Dataset>) -> Self {
        Self { data }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> CivilRegistryServer<Self> {
        CivilRegistryServer::new(self)
    }

    fn citizen(&self, nin: &str) -> Result<&Citizen, AgencyError> {
        let nin = nin_field("nin", nin)?;
        self.data
            .citizen(nin)
            .ok_or(AgencyError::NotFound("no person holds this NIN"))
    }

    fn verify(
        &self,
        request: &pb::VerifyIdentityRequest,
    ) -> Result<pb::VerifyIdentityResponse, AgencyError> {
        let nin = nin_field("nin", &request.nin)?;
        if request.first_names.trim().is_empty() {
            return Err(AgencyError::invalid("first_names", "must not be empty"));
        }
        if request.last_name.trim().is_empty() {
            return Err(AgencyError::invalid("last_name", "must not be empty"));
        }
        let date_of_birth = date_field("date_of_birth", &request.date_of_birth)?;
        let citizen = self
            .data
            .citizen(nin)
            .ok_or(AgencyError::NotFound("no person holds this NIN"))?;
        let first_names_match = same_name(&request.first_names, &citizen.first_names);
        let last_name_match = same_name(&request.last_name, citizen.last_name);
        let date_of_birth_match = date_of_birth == citizen.date_of_birth;
        let result = if !citizen.is_alive() {
            pb::VerificationResult::Deceased
        } else if first_names_match && last_name_match && date_of_birth_match {
            pb::VerificationResult::Match
        } else {
            pb::VerificationResult::NoMatch
        };
        Ok(pb::VerifyIdentityResponse {
            result: result.into(),
            first_names_match,
            last_name_match,
            date_of_birth_match,
        })
    }
}

#[tonic::async_trait]
impl CivilRegistry for CivilRegistryAgency {
    async fn get_person(
        &self,
        request: Request<pb::GetPersonRequest>,
    ) -> Result<Response<pb::GetPersonResponse>, Status> {
        let citizen = self.citizen(&request.get_ref().nin)?;
        Ok(Response::new(pb::GetPersonResponse {
            person: Some(person(citizen)),
        }))
    }

    async fn verify_identity(
        &self,
        request: Request<pb::VerifyIdentityRequest>,
    ) -> Result<Response<pb::VerifyIdentityResponse>, Status> {
        Ok(Response::new(self.verify(request.get_ref())?))
    }

    type WatchLifeEventsStream = LifeEventStream;

    async fn watch_life_events(
        &self,
        request: Request<pb::WatchLifeEventsRequest>,
    ) -> Result<Response<Self::WatchLifeEventsStream>, Status> {
        let request = request.get_ref();
        Ok(Response::new(LifeEventStream::new(
            Arc::clone(&self.data),
            request.after_sequence,
            request.max_events,
        )))
    }
}

/// The journal from a cursor, one event per poll.
///
/// Pull-based: an event is built only when the response body asks for the
/// next one, which it does only while HTTP/2 flow control lets it send. So
/// a slow reader slows the stream down, and a reader that goes away (the
/// response is dropped) stops it: no task, no channel, nothing left
/// running.
#[derive(Debug)]
pub struct LifeEventStream {
    data: Arc<Dataset>,
    next: usize,
    end: usize,
}

impl LifeEventStream {
    fn new(data: Arc<Dataset>, after_sequence: u64, max_events: u32) -> Self {
        let events = &data.life_events;
        let next = events.partition_point(|event| event.sequence <= after_sequence);
        let end = match max_events {
            0 => events.len(),
            max => next.saturating_add(max as usize).min(events.len()),
        };
        Self { data, next, end }
    }
}

impl Stream for LifeEventStream {
    type Item = Result<pb::LifeEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.next >= this.end {
            return Poll::Ready(None);
        }
        let event = this
            .data
            .life_events
            .get(this.next)
            .map(|e| Ok(life_event(e)));
        this.next += 1;
        Poll::Ready(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.end.saturating_sub(self.next);
        (remaining, Some(remaining))
    }
}

fn place(commune: &Commune) -> pb::Place {
    pb::Place {
        commune: commune.name.to_owned(),
        department: commune.department.to_owned(),
        region: commune.region.to_owned(),
    }
}

fn person(c: &Citizen) -> pb::Person {
    let sex = match c.sex {
        Sex::Male => pb::Sex::Male,
        Sex::Female => pb::Sex::Female,
    };
    let marital_status = match c.marital_status {
        MaritalStatus::Single => pb::MaritalStatus::Single,
        MaritalStatus::Married => pb::MaritalStatus::Married,
        MaritalStatus::Divorced => pb::MaritalStatus::Divorced,
        MaritalStatus::Widowed => pb::MaritalStatus::Widowed,
    };
    pb::Person {
        nin: c.nin.to_string(),
        first_names: c.first_names.clone(),
        last_name: c.last_name.to_owned(),
        sex: sex.into(),
        date_of_birth: c.date_of_birth.to_string(),
        place_of_birth: Some(place(c.place_of_birth)),
        father_nin: or_empty(c.father),
        mother_nin: or_empty(c.mother),
        marital_status: marital_status.into(),
        spouse_nin: or_empty(c.spouse),
        date_of_marriage: or_empty(c.date_of_marriage),
        deceased: !c.is_alive(),
        date_of_death: or_empty(c.date_of_death),
    }
}

fn life_event(e: &dataset::LifeEvent) -> pb::LifeEvent {
    let kind = match e.kind {
        LifeEventKind::Birth => pb::LifeEventKind::Birth,
        LifeEventKind::Marriage => pb::LifeEventKind::Marriage,
        LifeEventKind::Death => pb::LifeEventKind::Death,
    };
    pb::LifeEvent {
        sequence: e.sequence,
        kind: kind.into(),
        date: e.date.to_string(),
        nin: e.nin.to_string(),
        spouse_nin: or_empty(e.spouse),
        father_nin: or_empty(e.father),
        mother_nin: or_empty(e.mother),
        place: e.place.map(place),
    }
}

/// Names compare equal ignoring case, French accents, hyphens and runs of
/// spaces: "EL-HADJI  Malick" is "El Hadji Malick", "Cisse" is "Cissé".
fn same_name(presented: &str, recorded: &str) -> bool {
    folded_words(presented).eq(folded_words(recorded))
}

fn folded_words(name: &str) -> impl Iterator<Item = String> + '_ {
    name.split(|c: char| c.is_whitespace() || c == '-')
        .filter(|word| !word.is_empty())
        .map(|word| {
            word.chars()
                .flat_map(char::to_lowercase)
                .map(fold_accent)
                .collect()
        })
}

fn fold_accent(c: char) -> char {
    match c {
        'à' | 'â' | 'ä' | 'á' | 'ã' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'î' | 'ï' | 'í' | 'ì' => 'i',
        'ô' | 'ö' | 'ó' | 'ò' | 'õ' => 'o',
        'ù' | 'û' | 'ü' | 'ú' => 'u',
        'ç' => 'c',
        'ñ' => 'n',
        'ÿ' => 'y',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agencies::dataset::DEFAULT_SEED;
    use tokio_stream::StreamExt;

    fn agency() -> CivilRegistryAgency {
        CivilRegistryAgency::new(Arc::new(Dataset::generate(DEFAULT_SEED)))
    }

    #[test]
    fn names_fold_case_accents_and_spacing() {
        assert!(same_name("EL-HADJI  malick", "El Hadji Malick"));
        assert!(same_name("Cisse", "Cissé"));
        assert!(same_name(" Aissatou ", "Aïssatou"));
        assert!(!same_name("Fatou", "Fatoumata"));
        assert!(!same_name("Mame", "Mame Diarra"));
    }

    #[test]
    fn verify_identity_answers_match_only() {
        let agency = agency();
        let model = agency.data.citizens[0].clone();
        let mut request = pb::VerifyIdentityRequest {
            nin: model.nin.to_string(),
            first_names: model.first_names.to_uppercase(),
            last_name: model.last_name.to_owned(),
            date_of_birth: model.date_of_birth.to_string(),
        };
        let answer = agency.verify(&request).unwrap();
        assert_eq!(answer.result(), pb::VerificationResult::Match);

        request.date_of_birth = model.date_of_birth.add_days(1).to_string();
        let answer = agency.verify(&request).unwrap();
        assert_eq!(answer.result(), pb::VerificationResult::NoMatch);
        assert!(answer.first_names_match && answer.last_name_match && !answer.date_of_birth_match);

        request.date_of_birth = "1990-02-30".to_owned();
        let error = agency.verify(&request).unwrap_err();
        assert!(matches!(
            error,
            AgencyError::InvalidArgument {
                field: "date_of_birth",
                ..
            }
        ));

        let dead = &agency.data.citizens[1];
        request.nin = dead.nin.to_string();
        request.date_of_birth = dead.date_of_birth.to_string();
        let answer = agency.verify(&request).unwrap();
        assert_eq!(answer.result(), pb::VerificationResult::Deceased);
    }

    #[test]
    fn unknown_and_malformed_nins_are_told_apart() {
        let agency = agency();
        assert!(matches!(
            agency.citizen("1001193000000"),
            Err(AgencyError::NotFound(_))
        ));
        assert!(matches!(
            agency.citizen("1001-1930-000"),
            Err(AgencyError::InvalidArgument { field: "nin", .. })
        ));
        let record = person(
            agency
                .citizen(agency.data.citizens[0].nin.as_str())
                .unwrap(),
        );
        assert_eq!(record.marital_status(), pb::MaritalStatus::Married);
        assert!(!record.spouse_nin.is_empty() && record.date_of_death.is_empty());
    }

    #[tokio::test]
    async fn life_events_resume_after_a_cursor() {
        let data = Arc::new(Dataset::generate(DEFAULT_SEED));
        let first: Vec<_> = LifeEventStream::new(Arc::clone(&data), 0, 5)
            .collect()
            .await;
        let first: Vec<u64> = first.into_iter().map(|e| e.unwrap().sequence).collect();
        assert_eq!(first, [1, 2, 3, 4, 5]);
        let next: Vec<_> = LifeEventStream::new(Arc::clone(&data), 5, 2)
            .collect()
            .await;
        let next: Vec<u64> = next.into_iter().map(|e| e.unwrap().sequence).collect();
        assert_eq!(next, [6, 7]);
        let all = LifeEventStream::new(Arc::clone(&data), 0, 0);
        assert_eq!(all.size_hint().0, data.life_events.len());
        let past_end = LifeEventStream::new(Arc::clone(&data), u64::MAX, 0);
        assert_eq!(past_end.size_hint(), (0, Some(0)));
    }
}
