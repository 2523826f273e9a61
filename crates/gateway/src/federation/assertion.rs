//! What a gateway asserts to a partner instance's gateway about a call it
//! forwards, signed, and the checks the partner makes of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;

use crate::identity::MemberId;
use crate::note::{SigningKey, Verifier};

/// The note's first line: the format and its version.
const HEADER: &str = "govbridge federation assertion v1";

/// How long after it was issued an assertion is accepted (and how far in
/// the future, for clocks apart).
pub const MAX_AGE: Duration = Duration::from_secs(MAX_AGE_SECONDS.unsigned_abs());
const MAX_AGE_SECONDS: i64 = 60;

/// The most a `bridge-assertion` header may hold.
const MAX_ENCODED: usize = 8 * 1024;

/// Who called what, as the calling instance's gateway asserts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The asserting instance.
    pub from: String,
    /// The instance it is addressed to.
    pub to: String,
    /// The asserting gateway's identity (its certificate's member id).
    pub gateway: MemberId,
    /// The member that made the call, of the asserting instance.
    pub caller: MemberId,
    /// `/package.Service/Method`.
    pub method: String,
    /// The provider the call is for, of the addressed instance.
    pub provider: MemberId,
    /// The call's `bridge-request-id`, in both instances' logs.
    pub request_id: String,
    /// 128 random bits, hex: an assertion is accepted once.
    pub nonce: String,
    /// When it was issued, Unix seconds.
    pub issued: i64,
    /// When the certificate the caller presented to the asserting gateway
    /// expires, Unix seconds: what the partner's policies see as
    /// `certificate_days_left` (the partner's gateway sees only the
    /// asserting gateway's certificate). Absent from an older gateway's
    /// assertions.
    pub caller_not_after: Option<i64>,
    pub purpose: Option<String>,
    pub reason: Option<String>,
    pub user_id: Option<String>,
}

/// Why an assertion is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("the call carries no bridge-assertion from the partner's gateway")]
    Missing,
    #[error("the assertion is not base64url of a signed note")]
    Encoding,
    #[error("the assertion is not signed by instance {0}'s federation key")]
    Signature(String),
    #[error("malformed assertion: {0}")]
    Malformed(String),
    #[error("the assertion {0}")]
    Mismatch(String),
    #[error("the assertion was issued {0} s from now, outside the {max} s accepted", max = MAX_AGE.as_secs())]
    Stale(i64),
    #[error("the assertion was already used (nonce {0})")]
    Replayed(String),
}

impl Assertion {
    /// A fresh nonce, from the operating system's random source.
    pub fn nonce() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// The assertion's text: the note's body.
    fn text(&self) -> String {
        let mut text = format!(
            "{HEADER}\nfrom {}\nto {}\ngateway {}\ncaller {}\nmethod {}\nprovider {}\n\
             request-id {}\nnonce {}\nissued {}\n",
            self.from,
            self.to,
            self.gateway,
            self.caller,
            self.method,
            self.provider,
            self.request_id,
            self.nonce,
            self.issued
        );
        if let Some(not_after) = self.caller_not_after {
            text.push_str(&format!("caller-not-after {not_after}\n"));
        }
        for (name, value) in [
            ("purpose", &self.purpose),
            ("reason", &self.reason),
            ("user-id", &self.user_id),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("{name} {value}\n"));
            }
        }
        text
    }

    /// Signed with `key`, as a `bridge-assertion` value.
    pub fn seal(&self, key: &SigningKey) -> String {
        BASE64URL.encode(key.sign(&self.text()))
    }

    /// The assertion in `value`, signed by `key` (the partner's).
    pub fn open(value: &[u8], key: &Verifier) -> Result<Self, AssertionError> {
        if value.len() > MAX_ENCODED {
            return Err(AssertionError::Encoding);
        }
        let note = note_of(value)?;
        let text = key
            .open(&note)
            .map_err(|_| AssertionError::Signature(key.name().to_owned()))?;
        Self::parse(text)
    }

    /// The assertion in `value`, a sealed one this gateway took (and
    /// logged) after checking its signature: read, not checked again (the
    /// partner's key may have changed since).
    pub fn read_logged(value: &str) -> Result<Self, AssertionError> {
        let note = note_of(value.as_bytes())?;
        // The text, then a blank line and its signatures.
        let text = note
            .split_once("\n\n")
            .map_or(note.as_str(), |(text, _)| text);
        Self::parse(text)
    }

    fn parse(text: &str) -> Result<Self, AssertionError> {
        let malformed = |what: &str| AssertionError::Malformed(what.to_owned());
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed("not a govbridge federation assertion v1"));
        }
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in lines {
            let (name, value) = line
                .split_once(' ')
                .ok_or_else(|| malformed("a line without a value"))?;
            if fields.insert(name, value).is_some() {
                return Err(AssertionError::Malformed(format!("{name} twice")));
            }
        }
        let take = |name: &str| fields.get(name).copied();
        fn required<'t>(value: Option<&'t str>, name: &str) -> Result<&'t str, AssertionError> {
            value.ok_or_else(|| AssertionError::Malformed(format!("no {name}")))
        }
        let member = |value: Option<&str>, name: &str| {
            MemberId::parse(required(value, name)?)
                .map_err(|error| AssertionError::Malformed(format!("{name}: {error}")))
        };
        let assertion = Self {
            from: required(take("from"), "from")?.to_owned(),
            to: required(take("to"), "to")?.to_owned(),
            gateway: member(take("gateway"), "gateway")?,
            caller: member(take("caller"), "caller")?,
            method: required(take("method"), "method")?.to_owned(),
            provider: member(take("provider"), "provider")?,
            request_id: required(take("request-id"), "request-id")?.to_owned(),
            nonce: required(take("nonce"), "nonce")?.to_owned(),
            issued: required(take("issued"), "issued")?
                .parse()
                .map_err(|_| malformed("issued: not Unix seconds"))?,
            caller_not_after: take("caller-not-after")
                .map(str::parse)
                .transpose()
                .map_err(|_| malformed("caller-not-after: not Unix seconds"))?,
            purpose: take("purpose").map(str::to_owned),
            reason: take("reason").map(str::to_owned),
            user_id: take("user-id").map(str::to_owned),
        };
        // Lines a later version adds are signed like the rest, and left
        // alone here: a gateway does not act on what it does not know.
        if assertion.nonce.len() != 32 || !assertion.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("nonce: not 32 hex digits"));
        }
        Ok(assertion)
    }

    /// Checks that this assertion, from `partner` to `instance`, was made
    /// by `gateway` (the connection's peer) about a caller of its own
    /// instance, calling `method`, within [`MAX_AGE`] of `now`.
    pub fn check(
        &self,
        partner: &str,
        instance: &str,
        gateway: &MemberId,
        method: &str,
        now: i64,
    ) -> Result<(), AssertionError> {
        let mismatch = |what: String| Err(AssertionError::Mismatch(what));
        if self.from != partner || self.gateway != *gateway {
            return mismatch(format!(
                "is from {} ({}), not from the connection's gateway {gateway}",
                self.gateway, self.from
            ));
        }
        if self.to != instance {
            return mismatch(format!("is addressed to {}, not {instance}", self.to));
        }
        if self.caller.instance() != partner {
            return mismatch(format!(
                "names caller {}, not a member of {partner}",
                self.caller
            ));
        }
        if self.provider.instance() != instance {
            return mismatch(format!(
                "names provider {}, not a member of {instance}",
                self.provider
            ));
        }
        if self.method != method {
            return mismatch(format!("is for {}, not {method}", self.method));
        }
        let age = now.saturating_sub(self.issued);
        if age.unsigned_abs() > MAX_AGE_SECONDS.unsigned_abs() {
            return Err(AssertionError::Stale(-age));
        }
        Ok(())
    }
}

/// The signed note a `bridge-assertion` value encodes.
fn note_of(value: &[u8]) -> Result<String, AssertionError> {
    BASE64URL
        .decode(value)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(AssertionError::Encoding)
}

/// The nonces of the assertions accepted in the last [`MAX_AGE`] (and
/// issued up to as much ahead): one seen again is a replay. A fleet's
/// nodes also take each nonce in their database (`proxy::call::admit`).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// (asserting instance, nonce) -> until when (Unix seconds) it is
    /// remembered.
    nonces: HashMap<(String, String), i64>,
    /// The size past which expired nonces are swept out.
    sweep_at: usize,
}

impl Assertion {
    /// Until when (Unix seconds) its nonce must be remembered: issued at
    /// most [`MAX_AGE`] ahead, accepted at most `MAX_AGE` after, it can no
    /// longer be accepted then.
    pub fn remembered_until(&self) -> i64 {
        self.issued.saturating_add(MAX_AGE_SECONDS + 1)
    }
}

impl ReplayGuard {
    /// Refuses `assertion` if it was accepted before and is still
    /// remembered, without taking it.
    pub fn not_seen(&self, assertion: &Assertion, now: i64) -> Result<(), AssertionError> {
        let seen = self.seen(now);
        let key = (assertion.from.clone(), assertion.nonce.clone());
        match seen.nonces.get(&key) {
            Some(remembered) if *remembered >= now => {
                Err(AssertionError::Replayed(assertion.nonce.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Accepts `assertion` once.
    pub fn admit(&self, assertion: &Assertion, now: i64) -> Result<(), AssertionError> {
        let mut seen = self.seen(now);
        let key = (assertion.from.clone(), assertion.nonce.clone());
        match seen.nonces.get(&key) {
            Some(remembered) if *remembered >= now => {
                Err(AssertionError::Replayed(assertion.nonce.clone()))
            }
            _ => {
                seen.nonces.insert(key, assertion.remembered_until());
                Ok(())
            }
        }
    }

    /// Remembers `assertion`, taken before (by this gateway before it
    /// restarted), until it can no longer be accepted; false if it can no
    /// longer be already.
    pub fn remember(&self, assertion: &Assertion, now: i64) -> bool {
        let until = assertion.remembered_until();
        if until < now {
            return false;
        }
        let key = (assertion.from.clone(), assertion.nonce.clone());
        self.seen(now).nonces.insert(key, until);
        true
    }

    /// What is remembered, swept of what has expired once it has grown.
    fn seen(&self, now: i64) -> std::sync::MutexGuard<'_, Seen> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.nonces.len() >= seen.sweep_at {
            seen.nonces.retain(|_, until| *until >= now);
            // Swept again once it has doubled: amortized, whatever arrives.
            seen.sweep_at = (seen.nonces.len() * 2).max(4096);
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> MemberId {
        MemberId::parse(id).unwrap()
    }

    fn assertion(issued: i64) -> Assertion {
        Assertion {
            from: "SN".into(),
            to: "AZ".into(),
            gateway: member("SN/GOV/GOVBRIDGE/gateway"),
            caller: member("SN/COM/CBAO/kyc"),
            method: "/govbridge.business.v1.BusinessRegistry/GetCompany".into(),
            provider: member("AZ/GOV/ASAN/business-registry"),
            request_id: "5b0c0a0e-8d44-4f4e-9a51-6a3e2f1b7c11".into(),
            nonce: Assertion::nonce(),
            issued,
            caller_not_after: Some(issued + 86_400 * 90),
            purpose: Some("TRADE-FINANCE".into()),
            reason: Some("Letter of credit 2026-118, Ndèye".into()),
            user_id: None,
        }
    }

    const NOW: i64 = 1_764_880_000;

    #[test]
    fn an_assertion_read_back_from_the_log_is_refused_until_it_expires() {
        let key = SigningKey::generate("SN-federation").unwrap();
        let sealed = assertion(NOW).seal(&key);
        let opened = Assertion::open(sealed.as_bytes(), &key.verifier()).unwrap();
        assert_eq!(Assertion::read_logged(&sealed).unwrap(), opened);
        assert!(Assertion::read_logged("not base64!").is_err());
        // Taken before a restart, remembered after it.
        let guard = ReplayGuard::default();
        assert!(guard.remember(&opened, NOW + 1));
        assert!(matches!(
            guard.admit(&opened, NOW + 30),
            Err(AssertionError::Replayed(_))
        ));
        // Past the time it could be taken, it is not kept.
        let old = assertion(NOW - 200);
        assert!(!guard.remember(&old, NOW));
        assert!(guard.admit(&old, NOW).is_ok());
    }

    #[test]
    fn a_sealed_assertion_opens_with_the_partners_key_only() {
        let key = SigningKey::generate("SN-federation").unwrap();
        let sealed = assertion(NOW).seal(&key);
        let opened = Assertion::open(sealed.as_bytes(), &key.verifier()).unwrap();
        assert_eq!(opened, assertion(NOW).with_nonce(&opened.nonce));
        assert_eq!(opened.caller_not_after, Some(NOW + 86_400 * 90));
        // An older gateway's assertion says nothing of the certificate.
        let older = Assertion {
            caller_not_after: None,
            ..assertion(NOW)
        };
        let opened_older = Assertion::open(older.seal(&key).as_bytes(), &key.verifier()).unwrap();
        assert_eq!(opened_older.caller_not_after, None);
        let gateway = member("SN/GOV/GOVBRIDGE/gateway");
        let method = "/govbridge.business.v1.BusinessRegistry/GetCompany";
        opened
            .check("SN", "AZ", &gateway, method, NOW + 30)
            .unwrap();

        let other = SigningKey::generate("SN-federation").unwrap();
        assert_eq!(
            Assertion::open(sealed.as_bytes(), &other.verifier()),
            Err(AssertionError::Signature("SN-federation".into()))
        );
        // One character changed anywhere: refused.
        let mut altered = sealed.clone().into_bytes();
        altered[40] = if altered[40] == b'A' { b'B' } else { b'A' };
        assert!(Assertion::open(&altered, &key.verifier()).is_err());
        assert_eq!(
            Assertion::open(b"not base64!", &key.verifier()),
            Err(AssertionError::Encoding)
        );
    }

    #[test]
    fn checks_name_what_does_not_match() {
        let gateway = member("SN/GOV/GOVBRIDGE/gateway");
        let method = "/govbridge.business.v1.BusinessRegistry/GetCompany";
        let fresh = assertion(NOW);
        let refused = |result: Result<(), AssertionError>| result.unwrap_err().to_string();
        assert!(
            refused(fresh.check("SN", "SN", &gateway, method, NOW)).contains("addressed to AZ")
        );
        assert!(refused(fresh.check("KE", "AZ", &gateway, method, NOW)).contains("not from"));
        let other = member("SN/GOV/OTHER/gateway");
        assert!(refused(fresh.check("SN", "AZ", &other, method, NOW)).contains("not from"));
        assert!(refused(fresh.check("SN", "AZ", &gateway, "/a.B/C", NOW)).contains("not /a.B/C"));
        assert_eq!(
            fresh.check("SN", "AZ", &gateway, method, NOW + 61),
            Err(AssertionError::Stale(-61))
        );
        assert_eq!(
            fresh.check("SN", "AZ", &gateway, method, NOW - 61),
            Err(AssertionError::Stale(61))
        );
        let foreign_caller = Assertion {
            caller: member("AZ/COM/BANK/kyc"),
            ..fresh.clone()
        };
        assert!(
            refused(foreign_caller.check("SN", "AZ", &gateway, method, NOW))
                .contains("not a member of SN")
        );
    }

    #[test]
    fn an_assertion_is_accepted_once() {
        let guard = ReplayGuard::default();
        let first = assertion(NOW);
        guard.admit(&first, NOW).unwrap();
        assert_eq!(
            guard.admit(&first, NOW + 10),
            Err(AssertionError::Replayed(first.nonce.clone()))
        );
        guard.admit(&assertion(NOW), NOW + 10).unwrap();
    }

    #[test]
    fn malformed_texts_are_named() {
        let parse = |text: &str| Assertion::parse(text).unwrap_err().to_string();
        assert!(parse("something else\n").contains("not a govbridge"));
        let text = assertion(NOW).text();
        assert!(parse(&text.replace("nonce ", "nonce 12")).contains("nonce"));
        // A line a later version adds is left alone.
        assert_eq!(
            Assertion::parse(&format!("{text}later-field value\n")).unwrap(),
            Assertion::parse(&text).unwrap()
        );
        assert!(parse(&format!("{text}no-value\n")).contains("without a value"));
        assert!(parse(&format!("{text}purpose X\n")).contains("purpose twice"));
        assert!(parse(&text.replace("caller SN/COM/CBAO/kyc\n", "")).contains("no caller"));
    }

    impl Assertion {
        fn with_nonce(self, nonce: &str) -> Self {
            Self {
                nonce: nonce.to_owned(),
                ..self
            }
        }
    }
}
