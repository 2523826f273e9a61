//! Azerbaijan's company registry (`govbridge.azbusiness.v1`), served by
//! the partner instance of `govbridge dev --federation`: synthetic
//! companies with Azerbaijani names, legal forms, addresses, activities
//! and heads, identified by their VÖEN.
//!
//! Deterministic from a seed, like the Senegalese [`Dataset`]: the partner
//! draws it from its dataset's seed. The first company is always active,
//! for examples and tests.
//!
//! [`Dataset`]: super::Dataset

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::AgencyError;
use super::calendar::Date;
use super::dataset::SplitMix64;
use gateway::proto::azbusiness::v1 as pb;
use pb::company_registry_server::{CompanyRegistry, CompanyRegistryServer};

/// How many companies the registry holds.
const COMPANIES: usize = 2_000;

/// A VÖEN: ten digits, the ninth a check digit, the tenth the taxpayer's
/// kind (see the proto for the synthetic check digit).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Voen([u8; 10]);

/// Why a text is not a VÖEN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidVoen {
    #[error("a VÖEN is 10 digits")]
    Shape,
    #[error("the last digit of a VÖEN is 1 (legal person) or 2 (individual entrepreneur)")]
    Kind,
    #[error("the check digit (the ninth) does not match")]
    CheckDigit,
}

impl Voen {
    /// The legal person's VÖEN of tax office `office` (0 to 99) and serial
    /// number `serial` (0 to 999,999).
    pub fn of_legal_person(office: u8, serial: u32) -> Self {
        let text = format!("{:02}{:06}", office % 100, serial % 1_000_000);
        let mut digits = [0; 10];
        for (digit, byte) in digits.iter_mut().zip(text.bytes()) {
            *digit = byte;
        }
        digits[8] = b'0' + check_digit(&digits);
        digits[9] = b'1';
        Self(digits)
    }

    /// Parses the ten digits of a VÖEN, without spaces.
    pub fn parse(text: &str) -> Result<Self, InvalidVoen> {
        let digits: [u8; 10] = text.as_bytes().try_into().map_err(|_| InvalidVoen::Shape)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(InvalidVoen::Shape);
        }
        if !matches!(digits[9], b'1' | b'2') {
            return Err(InvalidVoen::Kind);
        }
        if digits[8] != b'0' + check_digit(&digits) {
            return Err(InvalidVoen::CheckDigit);
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Weights 2 to 9 over the first eight digits, modulo 11, 10 written as 0.
fn check_digit(digits: &[u8; 10]) -> u8 {
    let sum: u32 = digits[..8]
        .iter()
        .zip(2u32..)
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    u8::try_from(sum % 11 % 10).unwrap_or(0)
}

impl fmt::Display for Voen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Voen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Voen({self})")
    }
}

/// One registered company.
#[derive(Debug, Clone)]
pub struct Company {
    pub voen: Voen,
    pub name: String,
    pub legal_form: pb::LegalForm,
    pub registration_date: Date,
    pub street: String,
    pub district: &'static str,
    pub city: &'static str,
    pub activity: (&'static str, &'static str),
    pub charter_capital_azn: i64,
    pub status: pb::CompanyStatus,
    pub head: String,
}

/// The registry's companies, by VÖEN.
#[derive(Debug)]
pub struct Registry {
    companies: Vec<Company>,
    by_voen: HashMap<Voen, usize>,
}

/// Cities, with their districts (Bakı's) and tax office codes.
const CITIES: [(&str, &[&str], u8); 7] = [
    (
        "Bakı",
        &[
            "Nəsimi",
            "Yasamal",
            "Nərimanov",
            "Xətai",
            "Səbail",
            "Binəqədi",
            "Nizami",
        ],
        14,
    ),
    ("Gəncə", &[], 21),
    ("Sumqayıt", &[], 17),
    ("Mingəçevir", &[], 23),
    ("Şəki", &[], 25),
    ("Lənkəran", &[], 27),
    ("Quba", &[], 29),
];

const STREETS: [&str; 12] = [
    "Nizami küçəsi",
    "Füzuli küçəsi",
    "Heydər Əliyev prospekti",
    "Azadlıq prospekti",
    "Neftçilər prospekti",
    "Səməd Vurğun küçəsi",
    "Üzeyir Hacıbəyov küçəsi",
    "Rəşid Behbudov küçəsi",
    "Bülbül prospekti",
    "Atatürk prospekti",
    "Zərifə Əliyeva küçəsi",
    "Xaqani küçəsi",
];

/// The first word of a name.
const PLACES: [&str; 16] = [
    "Xəzər",
    "Qafqaz",
    "Abşeron",
    "Araz",
    "Kür",
    "Şirvan",
    "Qarabağ",
    "Göygöl",
    "Qobustan",
    "Şahdağ",
    "Murov",
    "Talış",
    "Naftalan",
    "Qəbələ",
    "Zaqatala",
    "Gədəbəy",
];

/// Activities, each with the word its companies' names take.
const ACTIVITIES: [(&str, &str, &str); 10] = [
    (
        "01.25",
        "Digər ağac və kol meyvələrinin və qoz-fındığın becərilməsi",
        "Fındıq",
    ),
    ("01.27", "İçkilər üçün bitkilərin becərilməsi", "Çay"),
    ("11.02", "Üzüm şərabının istehsalı", "Şərab"),
    ("13.93", "Xalça və xalça məmulatlarının istehsalı", "Xalça"),
    (
        "41.20",
        "Yaşayış və qeyri-yaşayış binalarının tikintisi",
        "İnşaat",
    ),
    ("46.31", "Meyvə və tərəvəzin topdan satışı", "Aqro"),
    ("46.90", "İxtisaslaşdırılmamış topdan ticarət", "Ticarət"),
    ("49.41", "Yük avtomobil nəqliyyatı", "Nəqliyyat"),
    (
        "52.29",
        "Nəqliyyatla bağlı digər köməkçi fəaliyyət",
        "Logistika",
    ),
    (
        "09.10",
        "Neft və təbii qaz hasilatı sahəsində xidmətlər",
        "Neft Servis",
    ),
];

const MEN: [&str; 10] = [
    "Elvin", "Rauf", "Tural", "Kamran", "Orxan", "Rəşad", "Elçin", "Murad", "Vüsal", "Fuad",
];
const WOMEN: [&str; 10] = [
    "Leyla",
    "Aysel",
    "Nigar",
    "Günel",
    "Səbinə",
    "Aynur",
    "Lalə",
    "Könül",
    "Nərmin",
    "Ülviyyə",
];
/// Surnames, masculine (the feminine adds `a`).
const SURNAMES: [&str; 10] = [
    "Məmmədov",
    "Əliyev",
    "Hüseynov",
    "Həsənov",
    "Quliyev",
    "İsmayılov",
    "Abdullayev",
    "Rəhimov",
    "Süleymanov",
    "Cəfərov",
];

impl Registry {
    /// The registry of `seed`.
    pub fn generate(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0xA2E0_0000_0000_0031);
        let mut companies: Vec<Company> = Vec::with_capacity(COMPANIES);
        let mut by_voen = HashMap::with_capacity(COMPANIES);
        let first_day = Date::from_ymd(1995, 1, 1).unwrap_or_else(|| unreachable!("a valid date"));
        let span = first_day.days_until(Date::from_ymd(2026, 6, 30).unwrap_or(first_day));
        while companies.len() < COMPANIES {
            let (city, districts, office) = pick(&mut rng, &CITIES);
            let voen = Voen::of_legal_person(*office, draw(&mut rng, 1_000_000) as u32);
            if by_voen.contains_key(&voen) {
                continue;
            }
            let activity = pick(&mut rng, &ACTIVITIES);
            let (legal_form, suffix, capital) = match draw(&mut rng, 100) {
                0..=74 => (pb::LegalForm::Mmc, "MMC", 100 * (1 + draw(&mut rng, 500))),
                75..=84 => (
                    pb::LegalForm::Asc,
                    "ASC",
                    10_000 * (1 + draw(&mut rng, 200)),
                ),
                85..=94 => (pb::LegalForm::Qsc, "QSC", 1_000 * (1 + draw(&mut rng, 300))),
                _ => (pb::LegalForm::To, "TO", 0),
            };
            let status = match draw(&mut rng, 100) {
                _ if companies.is_empty() => pb::CompanyStatus::Active,
                0..=86 => pb::CompanyStatus::Active,
                87..=93 => pb::CompanyStatus::Suspended,
                _ => pb::CompanyStatus::Liquidated,
            };
            let woman = draw(&mut rng, 3) == 0;
            let (first, surname, father) = (
                if woman {
                    pick(&mut rng, &WOMEN)
                } else {
                    pick(&mut rng, &MEN)
                },
                pick(&mut rng, &SURNAMES),
                pick(&mut rng, &MEN),
            );
            let head = if woman {
                format!("{surname}a {first} {father} qızı")
            } else {
                format!("{surname} {first} {father} oğlu")
            };
            let district = if districts.is_empty() {
                ""
            } else {
                pick(&mut rng, districts)
            };
            by_voen.insert(voen, companies.len());
            companies.push(Company {
                voen,
                name: format!("{} {} {suffix}", pick(&mut rng, &PLACES), activity.2),
                legal_form,
                registration_date: first_day
                    .add_days(i32::try_from(draw(&mut rng, span as u64)).unwrap_or(0)),
                street: format!("{} {}", pick(&mut rng, &STREETS), 1 + draw(&mut rng, 180)),
                district,
                city,
                activity: (activity.0, activity.1),
                charter_capital_azn: capital as i64,
                status,
                head,
            });
        }
        Self { companies, by_voen }
    }

    /// Every company, the first active.
    pub fn companies(&self) -> &[Company] {
        &self.companies
    }

    /// The company holding `voen`.
    pub fn company(&self, voen: Voen) -> Option<&Company> {
        self.by_voen.get(&voen).map(|&index| &self.companies[index])
    }
}

fn draw(rng: &mut SplitMix64, bound: u64) -> u64 {
    rng.below(bound)
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// The registry's handlers.
#[derive(Debug, Clone)]
pub struct CompanyRegistryAgency {
    registry: Arc<Registry>,
}

impl CompanyRegistryAgency {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> CompanyRegistryServer<Self> {
        CompanyRegistryServer::new(self)
    }

    fn company(&self, voen: &str) -> Result<&Company, AgencyError> {
        let voen = Voen::parse(voen).map_err(|error| AgencyError::invalid("voen", error))?;
        self.registry
            .company(voen)
            .ok_or(AgencyError::NotFound("no company holds this VÖEN"))
    }
}

#[tonic::async_trait]
impl CompanyRegistry for CompanyRegistryAgency {
    async fn get_company(
        &self,
        request: Request<pb::GetCompanyRequest>,
    ) -> Result<Response<pb::Company>, Status> {
        let company = self.company(&request.get_ref().voen)?;
        Ok(Response::new(record(company)))
    }
}

fn record(company: &Company) -> pb::Company {
    pb::Company {
        voen: company.voen.to_string(),
        name: company.name.clone(),
        legal_form: company.legal_form.into(),
        registration_date: company.registration_date.to_string(),
        address: Some(pb::Address {
            street: company.street.clone(),
            district: company.district.to_owned(),
            city: company.city.to_owned(),
        }),
        activity: Some(pb::Activity {
            code: company.activity.0.to_owned(),
            description: company.activity.1.to_owned(),
        }),
        charter_capital_azn: company.charter_capital_azn,
        status: company.status.into(),
        head: company.head.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voens_are_checked() {
        let voen = Voen::of_legal_person(14, 25_836);
        assert_eq!(Voen::parse(voen.as_str()), Ok(voen));
        assert!(voen.as_str().starts_with("14025836") && voen.as_str().ends_with('1'));
        let mut wrong = voen.as_str().as_bytes().to_vec();
        wrong[8] = if wrong[8] == b'9' { b'0' } else { wrong[8] + 1 };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(Voen::parse(&wrong), Err(InvalidVoen::CheckDigit));
        assert_eq!(Voen::parse("140258361"), Err(InvalidVoen::Shape));
        assert_eq!(Voen::parse("14025836a1"), Err(InvalidVoen::Shape));
        assert_eq!(Voen::parse("1402583613"), Err(InvalidVoen::Kind));
    }

    #[test]
    fn the_registry_is_deterministic_and_answers_by_voen() {
        let registry = Registry::generate(7);
        let again = Registry::generate(7);
        assert_eq!(registry.companies().len(), COMPANIES);
        let first = registry.companies()[0].clone();
        assert_eq!(first.voen, again.companies()[0].voen);
        assert_eq!(first.status, pb::CompanyStatus::Active);
        assert_eq!(registry.company(first.voen).unwrap().name, first.name);
        assert!(
            registry
                .companies()
                .iter()
                .any(|company| company.city == "Bakı" && !company.district.is_empty())
        );
        assert_ne!(Registry::generate(8).companies()[0].voen, first.voen);

        let agency = CompanyRegistryAgency::new(Arc::new(registry));
        let answer = record(agency.company(first.voen.as_str()).unwrap());
        assert_eq!(answer.voen, first.voen.as_str());
        let suffix = answer.name.rsplit(' ').next().unwrap();
        assert!(
            ["MMC", "ASC", "QSC", "TO"].contains(&suffix),
            "{}",
            answer.name
        );
        assert!(answer.head.ends_with(" oğlu") || answer.head.ends_with(" qızı"));
        assert!(matches!(
            agency.company("1234"),
            Err(AgencyError::InvalidArgument { field: "voen", .. })
        ));
        let unknown = (0..)
            .map(|serial| Voen::of_legal_person(99, serial))
            .find(|voen| agency.registry.company(*voen).is_none())
            .unwrap();
        assert!(matches!(
            agency.company(unknown.as_str()),
            Err(AgencyError::NotFound(_))
        ));
    }
}
