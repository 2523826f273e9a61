//! The tax authority agency (DGID): `govbridge.tax.v1`.
//!
//! Owns tax clearance certificates, the income declarations view and the
//! checking of withholding uploads. It must never fail a whole upload for
//! one bad line (lines are rejected one by one), never hold more than the
//! running totals and the capped rejection list of an upload in memory,
//! and never log personal data.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::calendar::{Date, parse_month};
use super::dataset::{
    Clearance, Dataset, IncomeCategory, IncomeDeclaration, LegalForm, NonClearanceReason,
};
use super::{AgencyError, nin_field, ninea_field, or_empty, parse_nin, parse_ninea};
use gateway::proto::tax::v1 as pb;
use pb::get_tax_clearance_request::Taxpayer;
use pb::tax_authority_server::{TaxAuthority, TaxAuthorityServer};

/// At most this many rejected lines are listed in a receipt.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

/// Days a clearance certificate stays valid.
pub const CERTIFICATE_VALIDITY_DAYS: i32 = 90;

/// Capital from which a limited company's file is kept by the large
/// companies office.
const LARGE_COMPANY_CAPITAL_XOF: i64 = 1_000_000_000;

/// Declared incomes answered one by one, as the requests come.
pub type IncomeStream = Pin<Box<dyn Stream<Item = Result<pb::DeclaredIncome, Status>> + Send>>;

/// The tax authority's handlers.
#[derive(Debug)]
pub struct TaxAgency {
    data: Arc<Dataset>,
    /// Number of the next withholding receipt.
    receipts: AtomicU64,
}

impl TaxAgency {
    /// The tax authority over `data`.
    pub fn new(data: Arc<Dataset>) -> Self {
        Self {
            data,
            receipts: AtomicU64::new(1),
        }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> TaxAuthorityServer<Self> {
        TaxAuthorityServer::new(self)
    }

    fn clearance(
        &self,
        request: &pb::GetTaxClearanceRequest,
        issued_on: Date,
    ) -> Result<pb::TaxClearanceCertificate, AgencyError> {
        let (taxpayer, taxpayer_name, clearance, file_number, tax_office) = match &request.taxpayer
        {
            None => {
                return Err(AgencyError::invalid(
                    "taxpayer",
                    "name the taxpayer by subject_nin or ninea",
                ));
            }
            Some(Taxpayer::SubjectNin(text)) => {
                let nin = nin_field("subject_nin", text)?;
                let person = self
                    .data
                    .citizen(nin)
                    .ok_or(AgencyError::NotFound("no person holds this NIN"))?;
                (
                    pb::tax_clearance_certificate::Taxpayer::SubjectNin(nin.to_string()),
                    person.full_name(),
                    person.tax_clearance,
                    nin.to_string(),
                    format!(
                        "Centre des services fiscaux de {}",
                        person.place_of_birth.department
                    ),
                )
            }
            Some(Taxpayer::Ninea(text)) => {
                let ninea = ninea_field("ninea", text)?;
                let company = self
                    .data
                    .company(ninea)
                    .ok_or(AgencyError::NotFound("no company holds this NINEA"))?;
                let large = company.legal_form == LegalForm::Sa
                    && company.share_capital_xof >= LARGE_COMPANY_CAPITAL_XOF;
                let tax_office = if large {
                    "Direction des grandes entreprises".to_owned()
                } else {
                    format!(
                        "Centre des services fiscaux de {}",
                        company.commune.department
                    )
                };
                (
                    pb::tax_clearance_certificate::Taxpayer::Ninea(ninea.to_string()),
                    company.legal_name.clone(),
                    company.tax_clearance,
                    ninea.number().to_owned(),
                    tax_office,
                )
            }
        };
        let (status, reason) = match clearance {
            Clearance::Clear => (pb::ClearanceStatus::Clear, None),
            Clearance::NotClear(reason) => (pb::ClearanceStatus::NotClear, Some(reason)),
        };
        let (year, month, day) = issued_on.ymd();
        Ok(pb::TaxClearanceCertificate {
            certificate_number: format!("ARF-{year:04}{month:02}{day:02}-{file_number}"),
            taxpayer: Some(taxpayer),
            taxpayer_name,
            status: status.into(),
            reason: reason
                .map_or(pb::NonClearanceReason::Unspecified, non_clearance_reason)
                .into(),
            reason_text: reason
                .map(NonClearanceReason::text)
                .unwrap_or_default()
                .to_owned(),
            issued_on: issued_on.to_string(),
            valid_until: issued_on.add_days(CERTIFICATE_VALIDITY_DAYS).to_string(),
            tax_office,
        })
    }

    fn declared_income(
        &self,
        request: &pb::GetDeclaredIncomeRequest,
    ) -> Result<pb::DeclaredIncome, AgencyError> {
        let declaration = declaration(&self.data, request)?.ok_or(AgencyError::NotFound(
            "this person filed no income declaration for this fiscal year",
        ))?;
        Ok(declared_income(declaration))
    }

    /// The outcome for one withholding line.
    fn check_line(&self, line: &pb::WithholdingLine) -> Result<(), (pb::RejectionReason, String)> {
        use pb::RejectionReason as Reason;
        let payer = parse_ninea(&line.payer_ninea).map_err(|e| {
            (
                Reason::MalformedPayerNinea,
                format!("invalid payer_ninea: {e}"),
            )
        })?;
        if self.data.company(payer).is_none() {
            let message = "payer_ninea names no registered company".to_owned();
            return Err((Reason::UnknownPayer, message));
        }
        let nin = parse_nin(&line.subject_nin).map_err(|e| {
            (
                Reason::MalformedSubjectNin,
                format!("invalid subject_nin: {e}"),
            )
        })?;
        let Some(subject) = self.data.citizen(nin) else {
            let message = "subject_nin names no registered person".to_owned();
            return Err((Reason::UnknownSubject, message));
        };
        let (year, month) = parse_month(&line.period)
            .map_err(|e| (Reason::MalformedPeriod, format!("invalid period: {e}")))?;
        let amounts_valid = line.gross_amount_xof >= 0
            && (0..=line.gross_amount_xof).contains(&line.tax_withheld_xof);
        if !amounts_valid {
            let message = "gross_amount_xof and tax_withheld_xof must not be negative, \
                           and tax_withheld_xof not above gross_amount_xof"
                .to_owned();
            return Err((Reason::InvalidAmount, message));
        }
        let period_start = Date::from_ymd(year, month, 1);
        if let (Some(death), Some(start)) = (subject.date_of_death, period_start)
            && death < start
        {
            let message = "the subject had died before the period".to_owned();
            return Err((Reason::SubjectDeceased, message));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl TaxAuthority for TaxAgency {
    async fn get_tax_clearance(
        &self,
        request: Request<pb::GetTaxClearanceRequest>,
    ) -> Result<Response<pb::TaxClearanceCertificate>, Status> {
        Ok(Response::new(
            self.clearance(request.get_ref(), Date::today())?,
        ))
    }

    async fn get_declared_income(
        &self,
        request: Request<pb::GetDeclaredIncomeRequest>,
    ) -> Result<Response<pb::DeclaredIncome>, Status> {
        Ok(Response::new(self.declared_income(request.get_ref())?))
    }

    type StreamDeclaredIncomeStream = IncomeStream;

    async fn stream_declared_income(
        &self,
        request: Request<Streaming<pb::GetDeclaredIncomeRequest>>,
    ) -> Result<Response<Self::StreamDeclaredIncomeStream>, Status> {
        // Each answer is computed when the response body asks for it, so the
        // caller's sending is paced by its reading, with no task or buffer.
        let data = Arc::clone(&self.data);
        let answers = request.into_inner().map(move |asked| {
            let asked = asked?;
            Ok(match declaration(&data, &asked)? {
                Some(declaration) => declared_income(declaration),
                None => pb::DeclaredIncome {
                    nin: asked.nin,
                    fiscal_year: asked.fiscal_year,
                    ..pb::DeclaredIncome::default()
                },
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn submit_withholdings(
        &self,
        request: Request<Streaming<pb::WithholdingLine>>,
    ) -> Result<Response<pb::WithholdingReceipt>, Status> {
        let mut lines = request.into_inner();
        let mut upload = Upload::default();
        while let Some(line) = lines.message().await? {
            let outcome = self.check_line(&line);
            upload.record(line, outcome);
        }
        let number = self.receipts.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(upload.receipt(number)))
    }
}

/// Running totals of one withholding upload.
#[derive(Debug, Default)]
struct Upload {
    receipt: pb::WithholdingReceipt,
    /// FNV-1a over the lines, to tie the receipt id to the content.
    digest: u64,
}

impl Upload {
    fn record(
        &mut self,
        line: pb::WithholdingLine,
        outcome: Result<(), (pb::RejectionReason, String)>,
    ) {
        let receipt = &mut self.receipt;
        let index = receipt.lines_received;
        receipt.lines_received += 1;
        self.digest = fnv1a(self.digest, &line);
        match outcome {
            Ok(()) => {
                receipt.lines_accepted += 1;
                receipt.total_gross_xof = receipt
                    .total_gross_xof
                    .saturating_add(line.gross_amount_xof);
                receipt.total_withheld_xof = receipt
                    .total_withheld_xof
                    .saturating_add(line.tax_withheld_xof);
            }
            Err((reason, message)) => {
                receipt.lines_rejected += 1;
                if receipt.rejections.len() < MAX_LISTED_REJECTIONS {
                    receipt.rejections.push(pb::LineRejection {
                        line_index: index,
                        line_id: line.line_id,
                        reason: reason.into(),
                        message,
                    });
                } else {
                    receipt.rejections_truncated = true;
                }
            }
        }
    }

    fn receipt(self, number: u64) -> pb::WithholdingReceipt {
        let folded = (self.digest >> 32) ^ (self.digest & 0xFFFF_FFFF);
        pb::WithholdingReceipt {
            receipt_id: format!("DGID-WH-{number:06}-{folded:08X}"),
            ..self.receipt
        }
    }
}

fn fnv1a(mut state: u64, line: &pb::WithholdingLine) -> u64 {
    if state == 0 {
        state = 0xcbf2_9ce4_8422_2325;
    }
    let fields: [&[u8]; 6] = [
        line.line_id.as_bytes(),
        line.payer_ninea.as_bytes(),
        line.subject_nin.as_bytes(),
        line.period.as_bytes(),
        &line.gross_amount_xof.to_le_bytes(),
        &line.tax_withheld_xof.to_le_bytes(),
    ];
    for field in fields {
        for &byte in field.iter().chain(&[0xFF]) {
            state = (state ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    state
}

fn non_clearance_reason(reason: NonClearanceReason) -> pb::NonClearanceReason {
    match reason {
        NonClearanceReason::MissingReturn => pb::NonClearanceReason::MissingReturn,
        NonClearanceReason::UnpaidIncomeTax => pb::NonClearanceReason::UnpaidIncomeTax,
        NonClearanceReason::UnpaidVat => pb::NonClearanceReason::UnpaidVat,
        NonClearanceReason::UnpaidWithholding => pb::NonClearanceReason::UnpaidWithholding,
        NonClearanceReason::AuditInProgress => pb::NonClearanceReason::AuditInProgress,
    }
}

/// The declaration a request asks for; `None` when the person filed none
/// for that year.
fn declaration<'a>(
    data: &'a Dataset,
    request: &pb::GetDeclaredIncomeRequest,
) -> Result<Option<&'a IncomeDeclaration>, AgencyError> {
    let nin = nin_field("nin", &request.nin)?;
    if !(1960..=2100).contains(&request.fiscal_year) {
        return Err(AgencyError::invalid(
            "fiscal_year",
            "expected a year such as 2024",
        ));
    }
    if data.citizen(nin).is_none() {
        return Err(AgencyError::NotFound("no person holds this NIN"));
    }
    Ok(data.declaration(nin, request.fiscal_year as i32))
}

fn declared_income(declaration: &IncomeDeclaration) -> pb::DeclaredIncome {
    let lines: Vec<pb::IncomeLine> = declaration
        .lines
        .iter()
        .map(|line| {
            let category = match line.category {
                IncomeCategory::Salary => pb::IncomeCategory::Salary,
                IncomeCategory::Business => pb::IncomeCategory::Business,
                IncomeCategory::Rental => pb::IncomeCategory::Rental,
                IncomeCategory::Pension => pb::IncomeCategory::Pension,
                IncomeCategory::Agricultural => pb::IncomeCategory::Agricultural,
                IncomeCategory::Investment => pb::IncomeCategory::Investment,
            };
            pb::IncomeLine {
                category: category.into(),
                payer_ninea: or_empty(line.payer),
                amount_xof: line.amount_xof,
                tax_withheld_xof: line.tax_withheld_xof,
            }
        })
        .collect();
    pb::DeclaredIncome {
        nin: declaration.nin.to_string(),
        fiscal_year: declaration.fiscal_year as u32,
        filed_on: declaration.filed_on.to_string(),
        total_income_xof: lines.iter().map(|l| l.amount_xof).sum(),
        total_withheld_xof: lines.iter().map(|l| l.tax_withheld_xof).sum(),
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agencies::dataset::{DEFAULT_SEED, FISCAL_YEARS};

    fn agency() -> TaxAgency {
        TaxAgency::new(Arc::new(Dataset::generate(DEFAULT_SEED)))
    }

    #[test]
    fn clearance_for_people_and_companies() {
        let agency = agency();
        let today = Date::from_ymd(2025, 7, 1).unwrap();
        let model = &agency.data.citizens[0];
        let request = pb::GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::SubjectNin(model.nin.to_string())),
        };
        let certificate = agency.clearance(&request, today).unwrap();
        assert_eq!(certificate.status(), pb::ClearanceStatus::Clear);
        assert_eq!(certificate.valid_until, "2025-09-29");
        assert!(certificate.certificate_number.starts_with("ARF-20250701-"));

        let debtor = &agency.data.companies[1];
        let request = pb::GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::Ninea(debtor.ninea.to_string())),
        };
        let certificate = agency.clearance(&request, today).unwrap();
        assert_eq!(certificate.status(), pb::ClearanceStatus::NotClear);
        assert_ne!(certificate.reason(), pb::NonClearanceReason::Unspecified);
        assert!(!certificate.reason_text.is_empty());

        let missing = pb::GetTaxClearanceRequest { taxpayer: None };
        assert!(matches!(
            agency.clearance(&missing, today),
            Err(AgencyError::InvalidArgument {
                field: "taxpayer",
                ..
            })
        ));
        let malformed = pb::GetTaxClearanceRequest {
            taxpayer: Some(Taxpayer::Ninea("0048372 7G3".to_owned())),
        };
        assert!(matches!(
            agency.clearance(&malformed, today),
            Err(AgencyError::InvalidArgument { field: "ninea", .. })
        ));
    }

    #[test]
    fn declared_income_per_year() {
        let agency = agency();
        let model = &agency.data.citizens[0];
        for year in FISCAL_YEARS {
            let request = pb::GetDeclaredIncomeRequest {
                nin: model.nin.to_string(),
                fiscal_year: year as u32,
            };
            let income = agency.declared_income(&request).unwrap();
            assert!(income.total_income_xof > 0 && !income.lines.is_empty());
        }
        let request = pb::GetDeclaredIncomeRequest {
            nin: model.nin.to_string(),
            fiscal_year: 2010,
        };
        assert!(matches!(
            agency.declared_income(&request),
            Err(AgencyError::NotFound(_))
        ));
        let request = pb::GetDeclaredIncomeRequest {
            nin: model.nin.to_string(),
            fiscal_year: 0,
        };
        assert!(matches!(
            agency.declared_income(&request),
            Err(AgencyError::InvalidArgument {
                field: "fiscal_year",
                ..
            })
        ));
    }

    #[test]
    fn withholding_lines_are_checked_one_by_one() {
        use pb::RejectionReason as Reason;
        let agency = agency();
        let employer = agency.data.companies[0].ninea.to_string();
        let employee = agency.data.citizens[0].nin.to_string();
        let dead = agency.data.citizens[1].nin.to_string();
        let line = |id: &str, payer: &str, nin: &str, period: &str, gross: i64, withheld: i64| {
            pb::WithholdingLine {
                line_id: id.to_owned(),
                payer_ninea: payer.to_owned(),
                subject_nin: nin.to_owned(),
                period: period.to_owned(),
                gross_amount_xof: gross,
                tax_withheld_xof: withheld,
            }
        };
        let lines = [
            line("ok", &employer, &employee, "2025-05", 500_000, 60_000),
            line("bad-payer", "12", &employee, "2025-05", 1, 0),
            line("bad-nin", &employer, "x", "2025-05", 1, 0),
            line("bad-period", &employer, &employee, "2025-13", 1, 0),
            line("bad-amount", &employer, &employee, "2025-05", 100, 101),
            line("dead", &employer, &dead, "2025-07", 1, 0),
            line("ok-too", &employer, &employee, "2025-06", 500_000, 60_000),
        ];
        let mut upload = Upload::default();
        for l in lines {
            let outcome = agency.check_line(&l);
            upload.record(l, outcome);
        }
        let receipt = upload.receipt(7);
        assert_eq!(
            (
                receipt.lines_received,
                receipt.lines_accepted,
                receipt.lines_rejected
            ),
            (7, 2, 5)
        );
        assert_eq!(
            (receipt.total_gross_xof, receipt.total_withheld_xof),
            (1_000_000, 120_000)
        );
        let reasons: Vec<_> = receipt
            .rejections
            .iter()
            .map(|r| (r.line_index, r.reason()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, Reason::MalformedPayerNinea),
                (2, Reason::MalformedSubjectNin),
                (3, Reason::MalformedPeriod),
                (4, Reason::InvalidAmount),
                (5, Reason::SubjectDeceased),
            ]
        );
        assert!(receipt.receipt_id.starts_with("DGID-WH-000007-"));
        assert!(!receipt.rejections_truncated);
    }
}
