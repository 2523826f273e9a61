//! The business registry agency (APIX / RCCM): `govbridge.business.v1`.
//!
//! Owns the mapping from the dataset's companies and directorships to the
//! business registry protos. It must never return more about a director
//! than the registry publishes (NIN, names, office, appointment) and never
//! log personal data.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::dataset::{Company, CompanyStatus, Dataset, DirectorRole, LegalForm};
use super::{AgencyError, ninea_field};
use gateway::proto::business::v1 as pb;
use pb::business_registry_server::{BusinessRegistry, BusinessRegistryServer};

/// The business registry's handlers.
#[derive(Debug, Clone)]
pub struct BusinessRegistryAgency {
    data: Arc<Dataset>,
}

impl BusinessRegistryAgency {
    /// The registry over `data`.
    pub fn new(data: Arc<Dataset>) -> Self {
        Self { data }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> BusinessRegistryServer<Self> {
        BusinessRegistryServer::new(self)
    }

    fn company(&self, ninea: &str) -> Result<&Company, AgencyError> {
        let ninea = ninea_field("ninea", ninea)?;
        self.data
            .company(ninea)
            .ok_or(AgencyError::NotFound("no company holds this NINEA"))
    }

    fn directors(&self, company: &Company) -> pb::ListDirectorsResponse {
        let directors = company
            .directors
            .iter()
            .map(|director| {
                let person = self.data.citizen(director.nin);
                pb::Director {
                    nin: director.nin.to_string(),
                    first_names: person.map(|p| p.first_names.clone()).unwrap_or_default(),
                    last_name: person.map(|p| p.last_name.to_owned()).unwrap_or_default(),
                    role: director_role(director.role).into(),
                    appointment_date: director.appointed_on.to_string(),
                }
            })
            .collect();
        pb::ListDirectorsResponse {
            ninea: company.ninea.to_string(),
            directors,
        }
    }
}

#[tonic::async_trait]
impl BusinessRegistry for BusinessRegistryAgency {
    async fn get_company(
        &self,
        request: Request<pb::GetCompanyRequest>,
    ) -> Result<Response<pb::Company>, Status> {
        let company = self.company(&request.get_ref().ninea)?;
        Ok(Response::new(company_record(company)))
    }

    async fn list_directors(
        &self,
        request: Request<pb::ListDirectorsRequest>,
    ) -> Result<Response<pb::ListDirectorsResponse>, Status> {
        let company = self.company(&request.get_ref().ninea)?;
        Ok(Response::new(self.directors(company)))
    }
}

fn company_record(c: &Company) -> pb::Company {
    let legal_form = match c.legal_form {
        LegalForm::Sarl => pb::LegalForm::Sarl,
        LegalForm::Suarl => pb::LegalForm::Suarl,
        LegalForm::Sa => pb::LegalForm::Sa,
        LegalForm::Sas => pb::LegalForm::Sas,
        LegalForm::Gie => pb::LegalForm::Gie,
        LegalForm::Snc => pb::LegalForm::Snc,
    };
    let status = match c.status {
        CompanyStatus::Active => pb::CompanyStatus::Active,
        CompanyStatus::Suspended => pb::CompanyStatus::Suspended,
        CompanyStatus::InLiquidation => pb::CompanyStatus::InLiquidation,
        CompanyStatus::StruckOff => pb::CompanyStatus::StruckOff,
    };
    pb::Company {
        ninea: c.ninea.to_string(),
        legal_name: c.legal_name.clone(),
        legal_form: legal_form.into(),
        rccm_number: c.rccm_number.clone(),
        registration_date: c.registration_date.to_string(),
        address: Some(pb::Address {
            street: c.street.clone(),
            commune: c.commune.name.to_owned(),
            department: c.commune.department.to_owned(),
            region: c.commune.region.to_owned(),
        }),
        activity: Some(pb::Activity {
            code: c.activity.code.to_owned(),
            description: c.activity.description.to_owned(),
        }),
        share_capital_xof: c.share_capital_xof,
        status: status.into(),
    }
}

fn director_role(role: DirectorRole) -> pb::DirectorRole {
    match role {
        DirectorRole::ChairAndCeo => pb::DirectorRole::ChairAndCeo,
        DirectorRole::President => pb::DirectorRole::President,
        DirectorRole::ChiefExecutive => pb::DirectorRole::ChiefExecutive,
        DirectorRole::Manager => pb::DirectorRole::Manager,
        DirectorRole::DeputyChiefExecutive => pb::DirectorRole::DeputyChiefExecutive,
        DirectorRole::BoardMember => pb::DirectorRole::BoardMember,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agencies::dataset::DEFAULT_SEED;

    #[test]
    fn companies_and_directors() {
        let agency = BusinessRegistryAgency::new(Arc::new(Dataset::generate(DEFAULT_SEED)));
        let first = &agency.data.companies[0];
        let record = company_record(agency.company(first.ninea.as_str()).unwrap());
        assert_eq!(record.status(), pb::CompanyStatus::Active);
        assert!(record.rccm_number.starts_with("SN-"));
        let directors = agency.directors(first);
        assert!(directors.directors.len() >= 2);
        assert!(directors.directors.iter().all(|d| !d.last_name.is_empty()));

        // A well-formed NINEA (valid key) that no company holds.
        let unknown = (0..)
            .map(|n| crate::agencies::Ninea::from_parts(n, *b"Z9"))
            .find(|n| agency.data.company(*n).is_none())
            .unwrap();
        assert!(matches!(
            agency.company(unknown.as_str()),
            Err(AgencyError::NotFound(_))
        ));
        assert!(matches!(
            agency.company("00483721G3"),
            Err(AgencyError::InvalidArgument { field: "ninea", .. })
        ));
    }
}
