//! Fuzzes the gateway's reading of a request's data subject
//! (`audit::subject::read_subject`) against prost, the backends' decoder.
//!
//! Every input is read as a `GetTaxClearanceRequest` (the subject in a
//! `oneof` with a company's NINEA) and a `VerifyIdentityRequest` (a plain
//! string field). Where prost decodes the bytes, the subject the gateway
//! reads must be the one prost keeps; a subject a consent would be bound
//! to must always be one prost decodes, alone in its `oneof`.

#![no_main]

use std::sync::LazyLock;

use govbridge::catalog::Catalog;
use govbridge::catalog::subject::{MAX_SUBJECT, Reading, SubjectField, read_subject};
use govbridge::proto::AGENCY_DESCRIPTOR_SETS;
use govbridge::proto::civilregistry::v1::VerifyIdentityRequest;
use govbridge::proto::tax::v1::GetTaxClearanceRequest;
use govbridge::proto::tax::v1::get_tax_clearance_request::Taxpayer;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";
const VERIFY: &str = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";

/// The gateway's bounds on a subject it keeps.
fn bounded(subject: Option<String>) -> Option<String> {
    subject.filter(|subject| {
        !subject.is_empty() && subject.len() <= MAX_SUBJECT && !subject.contains('\0')
    })
}

/// The gateway may read no subject where prost reads one only when it
/// finds the message malformed by its stricter rules (groups nested deeper
/// than it follows): it then binds no consent and the call is refused.
fn agrees(gateway: &Reading<'_>, prost: Option<&str>) -> bool {
    gateway.decoded() == prost || gateway.is_malformed()
}

fn field(path: &str) -> &'static SubjectField {
    static AGENCIES: LazyLock<Catalog> = LazyLock::new(|| {
        Catalog::with_sets(&AGENCY_DESCRIPTOR_SETS.map(|(_, set)| set))
            .expect("the agencies' descriptor sets load")
    });
    AGENCIES
        .subjects()
        .field(path)
        .expect("the agencies' protos mark the subject")
}

fuzz_target!(|message: &[u8]| {
    let reading = read_subject(message, field(CLEARANCE));
    let decoded = GetTaxClearanceRequest::decode(message);
    if let Ok(request) = &decoded {
        let nin = match &request.taxpayer {
            Some(Taxpayer::SubjectNin(nin)) => Some(nin.clone()),
            _ => None,
        };
        let expected = bounded(nin);
        assert!(
            agrees(&reading, expected.as_deref()),
            "gateway {reading:?}, prost {expected:?}"
        );
    }
    if let Some(sole) = reading.sole() {
        let request = decoded.expect("a bound subject is in a message prost decodes");
        assert_eq!(request.taxpayer, Some(Taxpayer::SubjectNin(sole.to_owned())));
    }

    let reading = read_subject(message, field(VERIFY));
    if let Ok(request) = VerifyIdentityRequest::decode(message) {
        let expected = bounded(Some(request.nin));
        assert!(
            agrees(&reading, expected.as_deref()),
            "gateway {reading:?}, prost {expected:?}"
        );
    }
});
