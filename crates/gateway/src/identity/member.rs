//! Member identifiers: `INSTANCE/CLASS/CODE/SUBSYSTEM`, X-Road style.
//!
//! This module owns the one parser and the one printer of member ids, in both
//! of their forms: the plain form used in configuration, headers and logs
//! (`SN/COM/CBAO/kyc`) and the SPIFFE URI carried in certificates
//! (`spiffe://sn/COM/CBAO/kyc`). The instance is case-insensitive, because it
//! doubles as the SPIFFE trust domain, which is lower case; its canonical form
//! is upper case. Every other segment is case-sensitive.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The URI scheme of member identities in certificates.
const SPIFFE_SCHEME: &str = "spiffe://";

/// Longest accepted member id, in bytes. Ids travel in headers and logs; a
/// bound keeps both cheap and rules out abuse through huge SANs.
pub const MAX_MEMBER_ID_LEN: usize = 255;

/// A validated member identifier.
///
/// Cheap to clone; compares and hashes on its canonical text.
///
/// ```
/// use govbridge_gateway::identity::MemberId;
///
/// let bank = MemberId::parse("sn/COM/CBAO/kyc")?;
/// assert_eq!(bank.as_str(), "SN/COM/CBAO/kyc");
/// assert_eq!(bank.to_spiffe_uri(), "spiffe://sn/COM/CBAO/kyc");
/// assert_eq!(MemberId::from_spiffe_uri("spiffe://sn/COM/CBAO/kyc")?, bank);
/// assert!(MemberId::parse("SN/COM/CBAO").is_err());
/// # Ok::<(), govbridge_gateway::identity::InvalidMemberId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    text: Arc<str>,
}

/// Why a string is not a member id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMemberId {
    #[error("a member id has four segments INSTANCE/CLASS/CODE/SUBSYSTEM, found {0}")]
    SegmentCount(usize),
    #[error("segment {segment} of a member id is empty")]
    EmptySegment { segment: &'static str },
    #[error("segment {segment} of a member id may hold only A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadCharacter { segment: &'static str },
    #[error("a member id is at most {MAX_MEMBER_ID_LEN} bytes")]
    TooLong,
    #[error("a member URI starts with {SPIFFE_SCHEME}")]
    NotSpiffe,
}

const SEGMENT_NAMES: [&str; 4] = ["INSTANCE", "CLASS", "CODE", "SUBSYSTEM"];

impl MemberId {
    /// Parses the plain form, `INSTANCE/CLASS/CODE/SUBSYSTEM`.
    pub fn parse(text: &str) -> Result<Self, InvalidMemberId> {
        if text.len() > MAX_MEMBER_ID_LEN {
            return Err(InvalidMemberId::TooLong);
        }
        let segments: Vec<&str> = text.split('/').collect();
        if segments.len() != 4 {
            return Err(InvalidMemberId::SegmentCount(segments.len()));
        }
        for (segment, name) in segments.iter().zip(SEGMENT_NAMES) {
            if segment.is_empty() {
                return Err(InvalidMemberId::EmptySegment { segment: name });
            }
            if !segment.bytes().all(is_segment_byte) {
                return Err(InvalidMemberId::BadCharacter { segment: name });
            }
        }
        let canonical = format!(
            "{}/{}/{}/{}",
            segments[0].to_ascii_uppercase(),
            segments[1],
            segments[2],
            segments[3]
        );
        Ok(Self {
            text: canonical.into(),
        })
    }

    /// Parses the SPIFFE form, `spiffe://instance/CLASS/CODE/SUBSYSTEM`.
    pub fn from_spiffe_uri(uri: &str) -> Result<Self, InvalidMemberId> {
        let rest = uri
            .get(..SPIFFE_SCHEME.len())
            .filter(|scheme| scheme.eq_ignore_ascii_case(SPIFFE_SCHEME))
            .map(|_| &uri[SPIFFE_SCHEME.len()..])
            .ok_or(InvalidMemberId::NotSpiffe)?;
        Self::parse(rest)
    }

    /// The SPIFFE URI that names this member in a certificate.
    pub fn to_spiffe_uri(&self) -> String {
        let (instance, rest) = self.text.split_once('/').unwrap_or((&self.text, ""));
        format!("{SPIFFE_SCHEME}{}/{rest}", instance.to_ascii_lowercase())
    }

    /// The canonical plain form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn segment(&self, index: usize) -> &str {
        self.text.split('/').nth(index).unwrap_or_default()
    }

    /// The instance, e.g. `SN`.
    pub fn instance(&self) -> &str {
        self.segment(0)
    }

    /// The member class, e.g. `GOV` or `COM`.
    pub fn class(&self) -> &str {
        self.segment(1)
    }

    /// The member code, e.g. `CBAO`.
    pub fn code(&self) -> &str {
        self.segment(2)
    }

    /// The subsystem, e.g. `kyc`.
    pub fn subsystem(&self) -> &str {
        self.segment(3)
    }

    /// `INSTANCE/CLASS/CODE`: the member that owns this subsystem.
    pub fn owner(&self) -> &str {
        self.text
            .rsplit_once('/')
            .map_or(&*self.text, |(owner, _)| owner)
    }
}

fn is_segment_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

impl FromStr for MemberId {
    type Err = InvalidMemberId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_forms() {
        let id = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        assert_eq!(id.as_str(), "SN/COM/CBAO/kyc");
        assert_eq!(id.to_spiffe_uri(), "spiffe://sn/COM/CBAO/kyc");
        assert_eq!(
            MemberId::from_spiffe_uri("spiffe://sn/COM/CBAO/kyc").unwrap(),
            id
        );
        assert_eq!(id.instance(), "SN");
        assert_eq!(id.class(), "COM");
        assert_eq!(id.code(), "CBAO");
        assert_eq!(id.subsystem(), "kyc");
        assert_eq!(id.owner(), "SN/COM/CBAO");
    }

    #[test]
    fn instance_is_case_insensitive() {
        let id = MemberId::parse("sn/GOV/ANEC/civil-registry").unwrap();
        assert_eq!(id.as_str(), "SN/GOV/ANEC/civil-registry");
    }

    #[test]
    fn rejects_malformed_ids() {
        use InvalidMemberId::*;
        assert_eq!(MemberId::parse("SN/COM/CBAO"), Err(SegmentCount(3)));
        assert_eq!(MemberId::parse("SN/COM/CBAO/kyc/x"), Err(SegmentCount(5)));
        assert_eq!(
            MemberId::parse("SN//CBAO/kyc"),
            Err(EmptySegment { segment: "CLASS" })
        );
        assert_eq!(
            MemberId::parse("SN/COM/CB AO/kyc"),
            Err(BadCharacter { segment: "CODE" })
        );
        assert_eq!(
            MemberId::parse("SN/COM/CBAO/ky\u{e9}"),
            Err(BadCharacter {
                segment: "SUBSYSTEM"
            })
        );
        assert_eq!(MemberId::parse(&"a/".repeat(200)), Err(TooLong));
        assert_eq!(
            MemberId::from_spiffe_uri("https://sn/COM/CBAO/kyc"),
            Err(NotSpiffe)
        );
        assert_eq!(
            MemberId::from_spiffe_uri("spiffe://sn/COM/CBAO/kyc/extra"),
            Err(SegmentCount(5))
        );
    }

    /// Round trip over random strings: whatever parses prints back to an id
    /// that parses to itself, in both forms, and nothing panics.
    #[test]
    fn round_trips_random_input() {
        // Segments of a few characters, joined by 2 to 6 slashes, so that
        // both valid ids and near misses are common.
        let alphabet: Vec<char> = "aZ09._- :\u{e9}\0S".chars().collect();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..100_000 {
            let segments = 2 + next() % 5;
            let text = (0..segments)
                .map(|_| {
                    let len = next() % 5;
                    (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join("/");
            if let Ok(id) = MemberId::parse(&text) {
                parsed += 1;
                assert_eq!(MemberId::parse(id.as_str()).unwrap(), id);
                assert_eq!(MemberId::from_spiffe_uri(&id.to_spiffe_uri()).unwrap(), id);
                assert!(text.eq_ignore_ascii_case(id.as_str()));
            }
        }
        assert!(
            parsed > 100,
            "the generator must reach valid ids, got {parsed}"
        );
    }
}
