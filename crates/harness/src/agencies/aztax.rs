//! Azerbaijan's State Tax Service (`govbridge.aztax.v1`), served by the
//! partner instance of `govbridge dev --federation`: the standing of the
//! companies of its company registry ([`Registry`]) and their electronic
//! VAT invoices.
//!
//! A company's standing (arrears, VAT registration, tax office, last
//! return) is drawn from its VÖEN, so that the same seed gives the same
//! answers; it follows the registry's status (a suspended company is
//! suspended here, a liquidated one deregistered). The registry's first
//! company is always in good standing and a VAT payer, for examples and
//! tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Response, Status, Streaming};

use super::AgencyError;
use super::azerbaijan::{Company, Registry, Voen};
use super::calendar::Date;
use super::dataset::SplitMix64;
use gateway::proto::azbusiness::v1::{CompanyStatus, LegalForm};
use gateway::proto::aztax::v1 as pb;
use pb::tax_service_server::{TaxService, TaxServiceServer};

/// VAT, in percent of an invoice's amount.
const VAT_PERCENT: i64 = 18;

/// How many rejected invoices a receipt lists.
const MAX_LISTED_REJECTIONS: usize = 1_000;

/// The tax service's handlers.
#[derive(Debug, Clone)]
pub struct TaxServiceAgency {
    registry: Arc<Registry>,
    receipts: Arc<AtomicU64>,
}

impl TaxServiceAgency {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            receipts: Arc::default(),
        }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> TaxServiceServer<Self> {
        TaxServiceServer::new(self)
    }

    fn taxpayer(&self, field: &'static str, voen: &str) -> Result<&Company, AgencyError> {
        let voen = Voen::parse(voen).map_err(|error| AgencyError::invalid(field, error))?;
        self.registry
            .company(voen)
            .ok_or(AgencyError::NotFound("no taxpayer holds this VÖEN"))
    }

    /// `company`'s standing on `today`.
    fn status(&self, company: &Company, today: Date) -> pb::TaxpayerStatus {
        let first = self
            .registry
            .companies()
            .first()
            .is_some_and(|first| first.voen == company.voen);
        // Its own stream, from its VÖEN: the same answer every time.
        let mut rng = SplitMix64::new(
            company
                .voen
                .as_str()
                .parse::<u64>()
                .unwrap_or_default()
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ 0xD0E5_7A70,
        );
        let standing = match company.status {
            CompanyStatus::Liquidated => pb::Standing::Deregistered,
            CompanyStatus::Suspended => pb::Standing::Suspended,
            _ if first || rng.below(100) >= 12 => pb::Standing::InGoodStanding,
            _ => pb::Standing::InArrears,
        };
        let arrears_azn = match standing {
            pb::Standing::InArrears => 50 * (10 + rng.below(5_000)) as i64,
            _ => 0,
        };
        let vat_payer = standing != pb::Standing::Deregistered
            && (first
                || match company.legal_form {
                    LegalForm::Asc | LegalForm::Qsc => true,
                    LegalForm::Mmc => company.charter_capital_azn >= 20_000 || rng.below(2) == 0,
                    _ => rng.below(3) == 0,
                });
        let vat_registered_on = vat_payer.then(|| {
            let after = i32::try_from(rng.below(730)).unwrap_or(0);
            let day = company.registration_date.add_days(after);
            if day.days_until(today) < 0 {
                today
            } else {
                day
            }
        });
        // The month a return was last filed for: last month in good
        // standing, a few months back otherwise.
        let months_back = match standing {
            pb::Standing::InGoodStanding => Some(1),
            pb::Standing::InArrears => Some(2 + rng.below(3)),
            pb::Standing::Suspended => Some(3 + rng.below(22)),
            _ => None,
        };
        let last_return_period = months_back.map_or_else(String::new, |back| {
            let (year, month, _) = today.ymd();
            let months = i64::from(year) * 12 + i64::from(month) - 1 - back as i64;
            format!(
                "{:04}-{:02}",
                months.div_euclid(12),
                months.rem_euclid(12) + 1
            )
        });
        pb::TaxpayerStatus {
            voen: company.voen.to_string(),
            name: company.name.clone(),
            standing: standing.into(),
            arrears_azn,
            vat_payer,
            vat_registered_on: vat_registered_on.map_or_else(String::new, |day| day.to_string()),
            tax_office: tax_office(company),
            last_return_period,
            as_of: today.to_string(),
        }
    }

    /// Why `invoice` is rejected, if it is.
    fn check(&self, invoice: &pb::ElectronicInvoice, today: Date) -> Result<i64, String> {
        if invoice.invoice_id.is_empty() {
            return Err("invoice_id is empty".to_owned());
        }
        let seller = self
            .taxpayer("seller_voen", &invoice.seller_voen)
            .map_err(|error| format!("seller_voen: {error}"))?;
        let seller_status = self.status(seller, today);
        if !seller_status.vat_payer {
            return Err(format!(
                "the seller {} is not registered for VAT",
                seller.voen
            ));
        }
        if seller_status.standing() != pb::Standing::InGoodStanding
            && seller_status.standing() != pb::Standing::InArrears
        {
            return Err(format!("the seller {} is not trading", seller.voen));
        }
        self.taxpayer("buyer_voen", &invoice.buyer_voen)
            .map_err(|error| format!("buyer_voen: {error}"))?;
        let issued = Date::parse(&invoice.issued_on)
            .map_err(|error| format!("issued_on `{}`: {error}", invoice.issued_on))?;
        if today.days_until(issued) > 0 {
            return Err(format!("issued_on {issued} is in the future"));
        }
        if invoice.amount_azn <= 0 {
            return Err("amount_azn must be more than 0".to_owned());
        }
        let vat = vat_of(invoice.amount_azn);
        if invoice.vat_azn != vat {
            return Err(format!(
                "vat_azn is {}, and {VAT_PERCENT} % of {} AZN is {vat}",
                invoice.vat_azn, invoice.amount_azn
            ));
        }
        Ok(vat)
    }
}

/// VAT on `amount`, rounded to the manat.
pub fn vat_of(amount: i64) -> i64 {
    amount.saturating_mul(VAT_PERCENT).saturating_add(50) / 100
}

/// The office that holds `company`'s file: by district in Bakı, by city
/// elsewhere.
fn tax_office(company: &Company) -> String {
    if company.district.is_empty() {
        format!("{} şəhəri Ərazi Vergilər İdarəsi", company.city)
    } else {
        format!(
            "{} şəhəri {} rayonu Ərazi Vergilər İdarəsi",
            company.city, company.district
        )
    }
}

#[tonic::async_trait]
impl TaxService for TaxServiceAgency {
    async fn get_taxpayer_status(
        &self,
        request: Request<pb::GetTaxpayerStatusRequest>,
    ) -> Result<Response<pb::TaxpayerStatus>, Status> {
        let company = self.taxpayer("voen", &request.get_ref().voen)?;
        Ok(Response::new(self.status(company, Date::today())))
    }

    async fn submit_invoices(
        &self,
        request: Request<Streaming<pb::ElectronicInvoice>>,
    ) -> Result<Response<pb::InvoiceReceipt>, Status> {
        let today = Date::today();
        let mut invoices = request.into_inner();
        let mut receipt = pb::InvoiceReceipt::default();
        while let Some(invoice) = invoices.message().await? {
            receipt.invoices_received += 1;
            match self.check(&invoice, today) {
                Ok(vat) => {
                    receipt.invoices_accepted += 1;
                    receipt.total_vat_azn = receipt.total_vat_azn.saturating_add(vat);
                }
                Err(reason) => {
                    receipt.invoices_rejected += 1;
                    if receipt.rejected.len() < MAX_LISTED_REJECTIONS {
                        receipt.rejected.push(pb::RejectedInvoice {
                            invoice_id: invoice.invoice_id,
                            reason,
                        });
                    }
                }
            }
        }
        let (year, month, day) = today.ymd();
        let number = self.receipts.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        receipt.receipt_number = format!("EQ-{year:04}{month:02}{day:02}-{number:06}");
        Ok(Response::new(receipt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency() -> TaxServiceAgency {
        TaxServiceAgency::new(Arc::new(Registry::generate(7)))
    }

    #[test]
    fn standings_follow_the_registry_and_do_not_change() {
        let agency = agency();
        let today = Date::from_ymd(2026, 12, 5).unwrap();
        let companies = agency.registry.companies();
        let first = agency.status(&companies[0], today);
        assert_eq!(first.standing(), pb::Standing::InGoodStanding);
        assert!(first.vat_payer && !first.vat_registered_on.is_empty());
        assert_eq!(first.last_return_period, "2026-11");
        assert_eq!(first.as_of, "2026-12-05");
        let mut seen = std::collections::HashSet::new();
        for company in companies {
            let status = agency.status(company, today);
            assert_eq!(status, agency.status(company, today), "{}", company.voen);
            let expected = match company.status {
                CompanyStatus::Liquidated => Some(pb::Standing::Deregistered),
                CompanyStatus::Suspended => Some(pb::Standing::Suspended),
                _ => None,
            };
            if let Some(expected) = expected {
                assert_eq!(status.standing(), expected);
            }
            assert_eq!(
                status.arrears_azn > 0,
                status.standing() == pb::Standing::InArrears
            );
            if status.standing() == pb::Standing::Deregistered {
                assert!(!status.vat_payer && status.last_return_period.is_empty());
            }
            assert!(status.tax_office.ends_with("Ərazi Vergilər İdarəsi"));
            seen.insert(status.standing());
        }
        assert_eq!(seen.len(), 4, "every standing occurs: {seen:?}");
    }

    #[test]
    fn invoices_are_checked_one_by_one() {
        let agency = agency();
        let today = Date::from_ymd(2026, 12, 5).unwrap();
        let companies = agency.registry.companies();
        let seller = &companies[0];
        let buyer = &companies[1];
        let invoice = pb::ElectronicInvoice {
            invoice_id: "INV-1".into(),
            seller_voen: seller.voen.to_string(),
            buyer_voen: buyer.voen.to_string(),
            issued_on: "2026-12-01".into(),
            amount_azn: 10_000,
            vat_azn: 1_800,
        };
        assert_eq!(agency.check(&invoice, today), Ok(1_800));
        assert_eq!(vat_of(1_003), 181);
        assert!(vat_of(i64::MAX) > 0, "no overflow");
        let wrong_vat = pb::ElectronicInvoice {
            vat_azn: 1_700,
            ..invoice.clone()
        };
        assert!(
            agency
                .check(&wrong_vat, today)
                .unwrap_err()
                .contains("18 %")
        );
        let future = pb::ElectronicInvoice {
            issued_on: "2026-12-06".into(),
            ..invoice.clone()
        };
        assert!(agency.check(&future, today).unwrap_err().contains("future"));
        let not_vat = companies
            .iter()
            .find(|company| !agency.status(company, today).vat_payer)
            .unwrap();
        let unregistered = pb::ElectronicInvoice {
            seller_voen: not_vat.voen.to_string(),
            ..invoice.clone()
        };
        assert!(
            agency
                .check(&unregistered, today)
                .unwrap_err()
                .contains("not registered for VAT")
        );
        let malformed = pb::ElectronicInvoice {
            buyer_voen: "12".into(),
            ..invoice
        };
        assert!(
            agency
                .check(&malformed, today)
                .unwrap_err()
                .starts_with("buyer_voen")
        );
    }
}
