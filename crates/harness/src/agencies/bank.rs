//! The account verification service of a demo bank (CBAO or Ecobank):
//! `govbridge.bank.v1`.
//!
//! Owns the answer to "does this account belong to this person?" for the
//! bank's own accounts. It must never reveal who holds an account, never
//! answer for another bank's accounts (they are unknown here), and never
//! log personal data.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::{AgencyError, Bank, Dataset, iban_field, nin_field};
use gateway::proto::bank::v1 as pb;
use pb::account_verification_server::{AccountVerification, AccountVerificationServer};

/// One bank's account verification handlers.
#[derive(Debug, Clone)]
pub struct BankAgency {
    bank: Bank,
    data: Arc<Dataset>,
}

impl BankAgency {
    /// `bank`'s service over `data`.
    pub fn new(bank: Bank, data: Arc<Dataset>) -> Self {
        Self { bank, data }
    }

    /// The generated tonic server around these handlers.
    pub fn into_server(self) -> AccountVerificationServer<Self> {
        AccountVerificationServer::new(self)
    }

    fn verify(&self, iban: &str, nin: &str) -> Result<pb::AccountVerificationResult, AgencyError> {
        use pb::AccountVerificationResult as Outcome;
        let iban = iban_field("iban", iban)?;
        let nin = nin_field("nin", nin)?;
        let outcome = match self.data.account(iban) {
            Some(account) if account.bank == self.bank => {
                if !account.is_open() {
                    Outcome::AccountClosed
                } else if account.holder == nin {
                    Outcome::Match
                } else {
                    Outcome::NoMatch
                }
            }
            // Another bank's account is as unknown here as one that does
            // not exist.
            _ => Outcome::AccountUnknown,
        };
        Ok(outcome)
    }

    fn verify_line(
        &self,
        line: pb::VerifyAccountHoldersRequest,
    ) -> pb::VerifyAccountHoldersResponse {
        match self.verify(&line.iban, &line.nin) {
            Ok(result) => pb::VerifyAccountHoldersResponse {
                line_id: line.line_id,
                result: result.into(),
                rejection: None,
            },
            Err(error) => {
                let field = match &error {
                    AgencyError::InvalidArgument { field, .. } => *field,
                    AgencyError::NotFound(_) => "",
                };
                pb::VerifyAccountHoldersResponse {
                    line_id: line.line_id,
                    result: pb::AccountVerificationResult::Unspecified.into(),
                    rejection: Some(pb::LineRejection {
                        field: field.to_owned(),
                        message: error.to_string(),
                    }),
                }
            }
        }
    }
}

/// The responses of a batch, one per request line.
pub type VerificationStream =
    Pin<Box<dyn Stream<Item = Result<pb::VerifyAccountHoldersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AccountVerification for BankAgency {
    async fn verify_account_holder(
        &self,
        request: Request<pb::VerifyAccountHolderRequest>,
    ) -> Result<Response<pb::VerifyAccountHolderResponse>, Status> {
        let request = request.get_ref();
        let result = self.verify(&request.iban, &request.nin)?;
        Ok(Response::new(pb::VerifyAccountHolderResponse {
            result: result.into(),
        }))
    }

    type VerifyAccountHoldersStream = VerificationStream;

    async fn verify_account_holders(
        &self,
        request: Request<Streaming<pb::VerifyAccountHoldersRequest>>,
    ) -> Result<Response<Self::VerifyAccountHoldersStream>, Status> {
        // Each response is computed when the response body asks for it, from
        // the next request line: the client's sending is paced by how fast
        // it reads answers (HTTP/2 flow control both ways), and dropping the
        // response drops the request stream with it. No task, no buffer.
        let agency = self.clone();
        let answers = request
            .into_inner()
            .map(move |line| line.map(|line| agency.verify_line(line)));
        Ok(Response::new(Box::pin(answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agencies::dataset::DEFAULT_SEED;
    use pb::AccountVerificationResult as Outcome;

    #[test]
    fn answers_only_for_its_own_accounts() {
        let data = Arc::new(Dataset::generate(DEFAULT_SEED));
        let cbao = BankAgency::new(Bank::Cbao, Arc::clone(&data));
        let ecobank = BankAgency::new(Bank::Ecobank, Arc::clone(&data));
        let own = &data.accounts[0];
        let (iban, holder) = (own.iban.as_str(), own.holder.as_str());
        let stranger = data.citizens[2].nin.as_str();
        assert_eq!(cbao.verify(iban, holder), Ok(Outcome::Match));
        assert_eq!(cbao.verify(iban, stranger), Ok(Outcome::NoMatch));
        assert_eq!(ecobank.verify(iban, holder), Ok(Outcome::AccountUnknown));
        let theirs = &data.accounts[1];
        assert_eq!(
            ecobank.verify(theirs.iban.as_str(), theirs.holder.as_str()),
            Ok(Outcome::Match)
        );

        let closed = &data.accounts[2];
        let bank = BankAgency::new(closed.bank, Arc::clone(&data));
        assert_eq!(
            bank.verify(closed.iban.as_str(), closed.holder.as_str()),
            Ok(Outcome::AccountClosed)
        );

        let never_opened = crate::agencies::Iban::from_bban("SN0120100100000000000101").unwrap();
        assert_eq!(
            cbao.verify(never_opened.as_str(), holder),
            Ok(Outcome::AccountUnknown)
        );
        let mut broken = iban.to_owned();
        broken.replace_range(27..28, if iban.ends_with('0') { "1" } else { "0" });
        assert!(matches!(
            cbao.verify(&broken, holder),
            Err(AgencyError::InvalidArgument { field: "iban", .. })
        ));
        assert!(matches!(
            cbao.verify(iban, "123"),
            Err(AgencyError::InvalidArgument { field: "nin", .. })
        ));
    }

    #[test]
    fn batch_lines_echo_their_id_and_reject_malformed_input() {
        let data = Arc::new(Dataset::generate(DEFAULT_SEED));
        let cbao = BankAgency::new(Bank::Cbao, Arc::clone(&data));
        let own = &data.accounts[0];
        let answer = cbao.verify_line(pb::VerifyAccountHoldersRequest {
            line_id: "L-1".to_owned(),
            iban: own.iban.to_string(),
            nin: own.holder.to_string(),
        });
        assert_eq!(
            (answer.line_id.as_str(), answer.result()),
            ("L-1", Outcome::Match)
        );
        assert!(answer.rejection.is_none());
        let answer = cbao.verify_line(pb::VerifyAccountHoldersRequest {
            line_id: "L-2".to_owned(),
            iban: "SN00".to_owned(),
            nin: own.holder.to_string(),
        });
        assert_eq!(
            (answer.line_id.as_str(), answer.result()),
            ("L-2", Outcome::Unspecified)
        );
        assert_eq!(answer.rejection.unwrap().field, "iban");
    }
}
