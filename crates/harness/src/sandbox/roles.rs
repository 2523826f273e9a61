//! Known test data by role: the citizens, companies and accounts of the
//! synthetic dataset that a test needs by what they are (a living adult
//! with a bank account, a deceased person, a company with tax arrears),
//! so that no test hard-codes a NIN.
//!
//! The dataset is generated from a seed, so the same seed always gives the
//! same people in the same roles; a seed whose dataset lacks a role is
//! refused when the sandbox starts.

use serde::Serialize;

use crate::agencies::dataset::{BankAccount, Citizen, Clearance, Company, CompanyStatus};
use crate::agencies::{Agency, Bank, Dataset};
use gateway::proto::civilregistry::v1::VerifyIdentityRequest;

/// A citizen as a test presents them to an agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// The national identification number (13 digits).
    pub nin: String,
    pub first_names: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
}

impl Person {
    fn of(citizen: &Citizen) -> Self {
        Self {
            nin: citizen.nin.to_string(),
            first_names: citizen.first_names.clone(),
            last_name: citizen.last_name.to_owned(),
            date_of_birth: citizen.date_of_birth.to_string(),
        }
    }

    /// A `VerifyIdentity` request presenting this person exactly as the
    /// civil registry knows them.
    pub fn verify_identity_request(&self) -> VerifyIdentityRequest {
        VerifyIdentityRequest {
            nin: self.nin.clone(),
            first_names: self.first_names.clone(),
            last_name: self.last_name.clone(),
            date_of_birth: self.date_of_birth.clone(),
        }
    }
}

/// A bank account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub iban: String,
    /// The member id of the bank that keeps it, e.g. `SN/COM/CBAO/accounts`.
    pub bank: String,
    /// The holder's NIN.
    pub holder: String,
}

impl Account {
    fn of(account: &BankAccount) -> Self {
        Self {
            iban: account.iban.to_string(),
            bank: Agency::Bank(account.bank).member_id().to_string(),
            holder: account.holder.to_string(),
        }
    }
}

/// A company of the business registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Firm {
    /// The tax and statistical identifier (NINEA).
    pub ninea: String,
    pub legal_name: String,
    pub rccm_number: String,
}

impl Firm {
    fn of(company: &Company) -> Self {
        Self {
            ninea: company.ninea.to_string(),
            legal_name: company.legal_name.clone(),
            rccm_number: company.rccm_number.clone(),
        }
    }
}

/// One citizen, company or account per role, from the sandbox's dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Roles {
    /// A living adult with an open account at CBAO ([`Self::account`]) and
    /// a tax clearance.
    pub adult_with_account: Person,
    /// That adult's open account at CBAO.
    pub account: Account,
    /// A person the civil registry records as dead.
    pub deceased: Person,
    /// A living person under 18.
    pub minor: Person,
    /// A living adult refused a tax clearance (arrears or a missing return).
    pub person_with_tax_arrears: Person,
    /// A closed account, at either bank.
    pub closed_account: Account,
    /// An active company with its tax clearance.
    pub company_in_good_standing: Firm,
    /// An active company refused a tax clearance.
    pub company_with_tax_arrears: Firm,
    /// A company struck off the register.
    pub company_struck_off: Firm,
}

impl Roles {
    /// Picks the first citizen, company and account of `data` for each role.
    pub fn pick(data: &Dataset) -> Result<Self, String> {
        let missing = |role: &str| {
            format!(
                "the dataset of seed {} has no {role}: choose another seed",
                data.seed
            )
        };
        let clear = |clearance: &Clearance| matches!(clearance, Clearance::Clear);
        let adult = |citizen: &Citizen| citizen.is_alive() && citizen.age() >= 18;

        let (holder, account) = data
            .accounts
            .iter()
            .filter(|account| account.is_open() && account.bank == Bank::Cbao)
            .find_map(|account| {
                let holder = &data.citizens[*data.citizens_by_nin.get(&account.holder)?];
                (adult(holder) && clear(&holder.tax_clearance)).then_some((holder, account))
            })
            .ok_or_else(|| missing("living adult with an open CBAO account"))?;
        let citizen = |role: &str, wanted: &dyn Fn(&Citizen) -> bool| {
            data.citizens
                .iter()
                .find(|citizen| wanted(citizen))
                .map(Person::of)
                .ok_or_else(|| missing(role))
        };
        let company = |role: &str, wanted: &dyn Fn(&Company) -> bool| {
            data.companies
                .iter()
                .find(|company| wanted(company))
                .map(Firm::of)
                .ok_or_else(|| missing(role))
        };
        Ok(Self {
            adult_with_account: Person::of(holder),
            account: Account::of(account),
            deceased: citizen("deceased person", &|c| !c.is_alive())?,
            minor: citizen("living minor", &|c| c.is_alive() && c.age() < 18)?,
            person_with_tax_arrears: citizen("adult with tax arrears", &|c| {
                adult(c) && !clear(&c.tax_clearance)
            })?,
            closed_account: data
                .accounts
                .iter()
                .find(|account| !account.is_open())
                .map(Account::of)
                .ok_or_else(|| missing("closed account"))?,
            company_in_good_standing: company("active company with a tax clearance", &|c| {
                c.status == CompanyStatus::Active && clear(&c.tax_clearance)
            })?,
            company_with_tax_arrears: company("active company with tax arrears", &|c| {
                c.status == CompanyStatus::Active && !clear(&c.tax_clearance)
            })?,
            company_struck_off: company("struck-off company", &|c| {
                c.status == CompanyStatus::StruckOff
            })?,
        })
    }
}
