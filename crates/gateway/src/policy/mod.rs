//! Authorization: every call, by exact gRPC method, against Cedar policies.
//!
//! This module owns the policy engine: the schema (written by operators,
//! completed with one action per published method), the policies in
//! `*.cedar` files, the entities built from the member registry, and the
//! decision for one call. It denies by default: a call is allowed only when
//! a `permit` applies and no `forbid` does; a policy that fails to evaluate
//! cannot allow anything. It never looks at message contents.
//!
//! The Cedar model:
//!
//! - principal `Member::"SN/COM/CBAO/kyc"`, in `Organization::"SN/COM/CBAO"`
//!   and in each of its `Group::"..."`s;
//! - action `Action::"/govbridge.civilregistry.v1.CivilRegistry/GetPerson"`,
//!   in its service's action group `Action::"govbridge.civilregistry.v1.CivilRegistry"`;
//! - resource `Provider::"SN/GOV/ANEC/civil-registry"`;
//! - context: `purpose` (empty when none was declared), `has_reason`,
//!   `has_user_id`, `consent.verified`, `hour` (UTC, which is Dakar time),
//!   `certificate_days_left`.

pub mod cases;
mod load;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request,
    RestrictedExpression,
};

use crate::config::Config;
use crate::identity::MemberId;
pub use crate::wire::CallScope;
pub use load::PolicyError;

/// The facts of one call that policies may look at.
#[derive(Debug, Clone)]
pub struct CallFacts<'a> {
    /// Who calls what, where, for which purpose.
    pub scope: CallScope<'a>,
    pub has_reason: bool,
    pub has_user_id: bool,
    pub consent_verified: bool,
    /// Hour of day, 0 to 23, UTC.
    pub hour: u8,
    /// Whole days until the caller's certificate expires.
    pub certificate_days_left: i64,
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that decided: the permits that allowed the call,
    /// or the forbids that denied it. Empty for a denial by default.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (and so could not allow anything).
    pub errors: Vec<String>,
}

/// Where a policy came from, for operators.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: PathBuf,
    pub line: usize,
}

/// One loaded policy configuration: schema, policies and entities.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: PolicySet,
    /// Published method -> the policies whose action scope covers it, with
    /// the members their principal scope covers (`None`: everyone).
    by_method: HashMap<String, Vec<ScopedPolicy>>,
    /// (caller, method) -> the policies that can apply to it, and the
    /// decisions already taken with them. Cedar evaluates every policy of
    /// the set it is given, so deciding with only these keeps a decision's
    /// cost independent of how many policies concern other members and
    /// methods. Bounded by members x methods. Keyed caller first so that a
    /// lookup borrows the method name instead of allocating a key.
    applicable: RwLock<HashMap<MemberId, HashMap<String, Arc<Applicable>>>>,
    /// The distinct sets in `applicable`, by method and the positions of
    /// their policies in `by_method`, shared by the members they apply to.
    policy_sets: Mutex<HashMap<PolicySetKey, Arc<PolicySet>>>,
    /// Policy id -> its `@conceal_days`, read once at load: parsing an
    /// annotation's name costs more than the rest of a call's record.
    conceal_days: HashMap<String, u16>,
    entities: Entities,
    sources: HashMap<String, PolicySource>,
    /// Members to whom at least one permit could apply, judging by the
    /// permits' principal scopes. A member outside it is refused at once.
    may_be_permitted: HashSet<MemberId>,
    /// Published method -> its providers.
    methods: BTreeMap<String, Vec<MemberId>>,
    purposes: Vec<String>,
    members: HashSet<MemberId>,
    authorizer: Authorizer,
}

/// The annotation of a permit whose accesses the Data Tracker withholds
/// for a number of days.
pub const CONCEAL_DAYS: &str = "conceal_days";
pub(crate) const MEMBER: &str = "Member";
pub(crate) const ORGANIZATION: &str = "Organization";
pub(crate) const GROUP: &str = "Group";
pub(crate) const PROVIDER: &str = "Provider";
pub(crate) const ACTION: &str = "Action";

/// `Type::"id"` as a Cedar entity uid.
pub(crate) fn uid(type_name: &str, id: &str) -> EntityUid {
    // Parsing a type name runs Cedar's parser: the constants are parsed
    // once, not for each of a registry's thousands of entities.
    static PARSED: std::sync::LazyLock<HashMap<&'static str, EntityTypeName>> =
        std::sync::LazyLock::new(|| {
            [MEMBER, ORGANIZATION, GROUP, PROVIDER, ACTION]
                .into_iter()
                .filter_map(|name| Some((name, name.parse().ok()?)))
                .collect()
        });
    let type_name = PARSED.get(type_name).cloned().unwrap_or_else(|| {
        type_name
            .parse()
            .unwrap_or_else(|_| unreachable!("entity type names are constants"))
    });
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

impl PolicyEngine {
    /// The policies in force, hashed (SHA-256, hex, over each policy's
    /// id and text in id order): nodes of a fleet compare it.
    pub fn fingerprint(&self) -> String {
        let mut policies: Vec<String> = self
            .policies
            .policies()
            .map(|policy| format!("{}\n{policy}\n", policy.id()))
            .collect();
        policies.sort();
        crate::keys::sha256_hex(policies.concat().as_bytes())
    }

    /// Loads and validates the schema and policies a configuration names,
    /// and builds the entities of its member registry.
    pub fn load(config: &Config) -> Result<Self, PolicyError> {
        load::load(config)
    }

    /// Decides one call.
    pub fn authorize(&self, facts: &CallFacts<'_>) -> Decision {
        let applicable = self.applicable(facts.scope.caller, facts.scope.method);
        let key = self.decision_key(facts);
        if let Some(decision) = key.as_ref().and_then(|key| applicable.decided(key)) {
            return decision;
        }
        let request = match request(facts, None) {
            Ok(request) => request,
            Err(error) => {
                return Decision {
                    allowed: false,
                    policies: Vec::new(),
                    errors: vec![error],
                };
            }
        };
        let decision = self.decide(&request, &applicable.policies);
        if let Some(key) = key {
            applicable.remember(key, &decision);
        }
        decision
    }

    /// What, besides the caller and the method, a decision depends on, as
    /// a small key: `None` for a provider or purpose that is not
    /// registered, whose decisions are not kept (made-up names cannot grow
    /// the cache).
    fn decision_key(&self, facts: &CallFacts<'_>) -> Option<DecisionKey> {
        let provider = self
            .methods
            .get(facts.scope.method)?
            .iter()
            .position(|provider| provider == facts.scope.provider)?;
        let purpose = match facts.scope.purpose {
            None => 0,
            Some(purpose) => 1 + self.purposes.iter().position(|known| known == purpose)?,
        };
        Some(DecisionKey {
            provider,
            purpose,
            has_reason: facts.has_reason,
            has_user_id: facts.has_user_id,
            consent_verified: facts.consent_verified,
            hour: facts.hour,
            certificate_days_left: facts.certificate_days_left,
        })
    }

    /// Decides a request with the given policies.
    fn decide(&self, request: &Request, policies: &PolicySet) -> Decision {
        let response = self
            .authorizer
            .is_authorized(request, policies, &self.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        // Cedar skips a policy that fails to evaluate. For a permit that
        // only denies; for a forbid it would allow what the forbid exists
        // to stop, so a failing forbid denies.
        let failed_forbids: Vec<String> = diagnostics
            .errors()
            .filter_map(|error| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(error) = error;
                let id = error.policy_id();
                policies
                    .policy(id)
                    .filter(|policy| policy.effect() == cedar_policy::Effect::Forbid)
                    .map(|_| id.to_string())
            })
            .collect();
        if !failed_forbids.is_empty() {
            let mut failed_forbids = failed_forbids;
            failed_forbids.sort();
            return Decision {
                allowed: false,
                policies: failed_forbids,
                errors,
            };
        }
        // Sorted, so that logs and tests see one order.
        let mut policies: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        policies.sort();
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
            errors,
        }
    }

    /// The policies whose scope covers `caller` calling `method`.
    fn applicable(&self, caller: &MemberId, method: &str) -> Arc<Applicable> {
        // A method that is not published has no action and no policy; it
        // is not cached, so that made-up names cannot grow the cache.
        if !self.by_method.contains_key(method) {
            return Arc::new(Applicable::new(Arc::default()));
        }
        let cached = self.applicable.read().ok().and_then(|cache| {
            cache
                .get(caller)
                .and_then(|methods| methods.get(method))
                .cloned()
        });
        if let Some(set) = cached {
            return set;
        }
        let scoped = self.by_method.get(method).map_or(&[][..], Vec::as_slice);
        let covering: Vec<usize> = scoped
            .iter()
            .enumerate()
            .filter(|(_, scoped)| {
                scoped
                    .principals
                    .as_ref()
                    .is_none_or(|members| members.contains(caller))
            })
            .map(|(index, _)| index)
            .collect();
        // Members in the same groups get the same policies: one set for
        // them all, not one (of a few KiB) per member.
        let mut sets = self
            .policy_sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let policies = sets
            .entry((method.to_owned(), covering))
            .or_insert_with_key(|(_, covering)| {
                let mut set = PolicySet::new();
                for policy in covering.iter().map(|index| &scoped[*index].policy) {
                    // Ids are unique in `self.policies`, so adding cannot fail.
                    if set.add(policy.clone()).is_err() {
                        tracing::error!(policy = %policy.id(), "policy index inconsistent");
                    }
                }
                Arc::new(set)
            })
            .clone();
        drop(sets);
        let set = Arc::new(Applicable::new(policies));
        if let Ok(mut cache) = self.applicable.write() {
            cache
                .entry(caller.clone())
                .or_default()
                .insert(method.to_owned(), set.clone());
        }
        set
    }

    /// Until when (Unix seconds) the Data Tracker withholds an access this
    /// decision allowed: a permit annotated `@conceal_days("N")` (a lawful
    /// basis such as a fraud investigation) hides it for N days after
    /// `now`. 0 when nothing conceals it.
    pub fn concealed_until(&self, decision: &Decision, now: i64) -> i64 {
        if !decision.allowed {
            return 0;
        }
        decision
            .policies
            .iter()
            .filter_map(|id| self.conceal_days.get(id).copied())
            .max()
            .map_or(0, |days| now.saturating_add(i64::from(days) * 86_400))
    }

    /// Whether any permit could apply to `member` at all. Conservative: a
    /// permit whose principal scope covers the member counts, whatever its
    /// conditions say.
    pub fn may_be_permitted(&self, member: &MemberId) -> bool {
        self.may_be_permitted.contains(member)
    }

    /// How many policies are loaded.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Where a policy is defined.
    pub fn source(&self, policy: &str) -> Option<&PolicySource> {
        self.sources.get(policy)
    }

    /// Every published method with its providers.
    pub fn methods(&self) -> &BTreeMap<String, Vec<MemberId>> {
        &self.methods
    }

    /// What `member` may call: each method and provider, with the purposes
    /// under which a call with a reason and a user id at noon is allowed,
    /// without consent and only with verified consent. An empty purpose
    /// means "without a purpose".
    pub fn permits(&self, member: &MemberId, certificate_days_left: i64) -> Vec<Permit> {
        let candidates: Vec<Option<&str>> = std::iter::once(None)
            .chain(self.purposes.iter().map(|purpose| Some(purpose.as_str())))
            .collect();
        let mut permits = Vec::new();
        for (method, providers) in &self.methods {
            for provider in providers {
                let allowed = |purpose: Option<&str>, consent_verified: bool| {
                    self.authorize(&CallFacts {
                        scope: CallScope {
                            caller: member,
                            method,
                            provider,
                            purpose,
                        },
                        has_reason: true,
                        has_user_id: true,
                        consent_verified,
                        hour: 12,
                        certificate_days_left,
                    })
                    .allowed
                };
                let mut permit = Permit {
                    method: method.clone(),
                    provider: provider.clone(),
                    purposes: Vec::new(),
                    purposes_with_consent: Vec::new(),
                };
                for purpose in &candidates {
                    let code = purpose.unwrap_or_default().to_owned();
                    if allowed(*purpose, false) {
                        permit.purposes.push(code);
                    } else if allowed(*purpose, true) {
                        permit.purposes_with_consent.push(code);
                    }
                }
                if !permit.purposes.is_empty() || !permit.purposes_with_consent.is_empty() {
                    permits.push(permit);
                }
            }
        }
        permits
    }

    /// Why the gateway would refuse a call before asking the policies, if
    /// it would: for `explain` and decision tables, which must not say
    /// ALLOW where the gateway says otherwise.
    pub fn precheck(
        &self,
        caller: &MemberId,
        method: &str,
        provider: &MemberId,
        purpose: Option<&str>,
    ) -> Result<(), String> {
        if !self.members.contains(caller) {
            return Err(format!(
                "{caller} is not a registered member: the gateway answers UNAUTHENTICATED"
            ));
        }
        if let Some(purpose) = purpose
            && !self.purposes.iter().any(|known| known == purpose)
        {
            return Err(format!(
                "purpose {purpose} is not registered: the gateway answers INVALID_ARGUMENT"
            ));
        }
        let providers = self.methods.get(method).ok_or_else(|| {
            format!("{method} is not published: the gateway answers UNIMPLEMENTED")
        })?;
        if !providers.contains(provider) {
            return Err(format!(
                "{provider} does not publish {method}: the gateway answers UNIMPLEMENTED"
            ));
        }
        Ok(())
    }
}

/// The policies that can apply to one (caller, method), and the
/// decisions taken with them.
///
/// A decision is a pure function of the request and the entities, both
/// fixed here but for the [`DecisionKey`], and the whole engine is
/// replaced on reload; so a decision kept here is the one Cedar would
/// take again, for a fraction of its cost.
#[derive(Debug)]
struct Applicable {
    policies: Arc<PolicySet>,
    /// Read on every call, written on the first of each key: callers of
    /// one (caller, method) read it together.
    decisions: RwLock<HashMap<DecisionKey, Decision>>,
}

/// A method and the positions, in its `by_method` entry, of the policies
/// that apply to a caller.
type PolicySetKey = (String, Vec<usize>);

/// Decisions kept per (caller, method); the hour and the certificate's
/// days left move on, so the map is emptied when it reaches this size
/// rather than growing with time.
const DECISIONS_KEPT: usize = 1024;

impl Applicable {
    fn new(policies: Arc<PolicySet>) -> Self {
        Self {
            policies,
            decisions: RwLock::default(),
        }
    }

    fn decided(&self, key: &DecisionKey) -> Option<Decision> {
        self.decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn remember(&self, key: DecisionKey, decision: &Decision) {
        let mut decisions = self
            .decisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if decisions.len() >= DECISIONS_KEPT {
            decisions.clear();
        }
        decisions.insert(key, decision.clone());
    }
}

/// The facts of a call besides its caller and method, with the provider
/// and the purpose as their positions in the engine's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DecisionKey {
    provider: usize,
    /// 0: no purpose; else 1 + its position among the registered ones.
    purpose: usize,
    has_reason: bool,
    has_user_id: bool,
    consent_verified: bool,
    hour: u8,
    certificate_days_left: i64,
}

/// What a member may call, for `policy check` and the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub method: String,
    pub provider: MemberId,
    /// Purposes allowed without consent.
    pub purposes: Vec<String>,
    /// Purposes allowed only with the data subject's verified consent.
    pub purposes_with_consent: Vec<String>,
}

/// The Cedar request for one call; checked against `schema` when given.
pub(crate) fn request(
    facts: &CallFacts<'_>,
    schema: Option<&cedar_policy::Schema>,
) -> Result<Request, String> {
    let consent = RestrictedExpression::new_record([(
        "verified".to_owned(),
        RestrictedExpression::new_bool(facts.consent_verified),
    )])
    .map_err(|error| error.to_string())?;
    let context = Context::from_pairs([
        (
            "purpose".to_owned(),
            RestrictedExpression::new_string(facts.scope.purpose.unwrap_or_default().to_owned()),
        ),
        (
            "has_reason".to_owned(),
            RestrictedExpression::new_bool(facts.has_reason),
        ),
        (
            "has_user_id".to_owned(),
            RestrictedExpression::new_bool(facts.has_user_id),
        ),
        ("consent".to_owned(), consent),
        (
            "hour".to_owned(),
            RestrictedExpression::new_long(i64::from(facts.hour)),
        ),
        (
            "certificate_days_left".to_owned(),
            RestrictedExpression::new_long(facts.certificate_days_left),
        ),
    ])
    .map_err(|error| error.to_string())?;
    Request::new(
        uid(MEMBER, facts.scope.caller.as_str()),
        uid(ACTION, facts.scope.method),
        uid(PROVIDER, facts.scope.provider.as_str()),
        context,
        schema,
    )
    .map_err(|error| error.to_string())
}

/// The members a principal scope covers, given each member's ancestors.
fn covered_members<'a>(
    constraint: &PrincipalConstraint,
    ancestors: &'a HashMap<MemberId, HashSet<EntityUid>>,
) -> Vec<&'a MemberId> {
    ancestors
        .iter()
        .filter(|(member, parents)| {
            let own = uid(MEMBER, member.as_str());
            match constraint {
                PrincipalConstraint::Any => true,
                PrincipalConstraint::Is(type_name) => type_name.to_string() == MEMBER,
                PrincipalConstraint::Eq(target) => *target == own,
                PrincipalConstraint::In(target) | PrincipalConstraint::IsIn(_, target) => {
                    *target == own || parents.contains(target)
                }
            }
        })
        .map(|(member, _)| member)
        .collect()
}

/// A policy with the members its principal scope covers.
#[derive(Debug)]
struct ScopedPolicy {
    policy: cedar_policy::Policy,
    principals: Option<HashSet<MemberId>>,
}

/// Indexes policies by the published methods their action scope covers.
fn index_by_method(
    policies: &PolicySet,
    methods: &BTreeMap<String, Vec<MemberId>>,
    ancestors: &HashMap<MemberId, HashSet<EntityUid>>,
) -> HashMap<String, Vec<ScopedPolicy>> {
    let mut index: HashMap<String, Vec<ScopedPolicy>> = HashMap::new();
    for policy in policies.policies() {
        let principals = match policy.principal_constraint() {
            PrincipalConstraint::Any => None,
            constraint => Some(
                covered_members(&constraint, ancestors)
                    .into_iter()
                    .cloned()
                    .collect(),
            ),
        };
        let action = policy.action_constraint();
        for method in methods.keys() {
            if action_covers(&action, method) {
                index.entry(method.clone()).or_default().push(ScopedPolicy {
                    policy: policy.clone(),
                    principals: principals.clone(),
                });
            }
        }
    }
    index
}

/// Whether a policy's action scope takes in `method`
/// (`/package.Service/Method`), named itself or by its service.
pub(crate) fn action_covers(action: &ActionConstraint, method: &str) -> bool {
    let own = || uid(ACTION, method);
    let service = || {
        method
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .map(|(service, _)| uid(ACTION, service))
    };
    match action {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(target) => *target == own(),
        ActionConstraint::In(targets) => {
            let (own, service) = (own(), service());
            targets
                .iter()
                .any(|target| *target == own || Some(target) == service.as_ref())
        }
    }
}

/// The policies that apply to principals, for [`PolicyEngine::may_be_permitted`].
fn permitted_members(
    policies: &PolicySet,
    ancestors: &HashMap<MemberId, HashSet<EntityUid>>,
) -> HashSet<MemberId> {
    policies
        .policies()
        .filter(|policy| policy.effect() == cedar_policy::Effect::Permit)
        .flat_map(|policy| covered_members(&policy.principal_constraint(), ancestors))
        .cloned()
        .collect()
}

/// Renames a policy: its `@id` annotation, else `FILE#N`.
fn policy_id(policy: &cedar_policy::Policy, file_stem: &str, index: usize) -> PolicyId {
    match policy.annotation("id") {
        Some(id) => PolicyId::new(id),
        None => PolicyId::new(format!("{file_stem}#{index}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's dev configuration (`config/`) in a temporary
    /// directory, with the dev policies or only the schema.
    fn setup(dev_policies: bool) -> (tempfile::TempDir, std::path::PathBuf) {
        let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("govbridge.toml");
        std::fs::copy(repository.join("govbridge.toml"), &config_path).unwrap();
        crate::catalog::testing::write_agency_descriptors(dir.path());
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        for entry in std::fs::read_dir(repository.join("policies")).unwrap() {
            let path = entry.unwrap().path();
            let schema = path.extension().is_some_and(|ext| ext == "cedarschema");
            if dev_policies || schema {
                std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
            }
        }
        (dir, config_path)
    }

    /// A typo in an entity inside a condition fails the load, naming the
    /// file, the line and the entity, instead of never matching.
    #[test]
    fn unknown_entities_in_conditions_fail_the_load() {
        let (dir, config_path) = setup(true);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join("typo.cedar"),
            "@id(\"typo\")\nforbid (principal, action, resource)\nwhen { principal in Group::\"licenced-banks\" };\n",
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let error = PolicyEngine::load(&config).unwrap_err();
        assert!(error.file.ends_with("typo.cedar"), "{error}");
        assert_eq!(error.position.map(|(line, _)| line), Some(3), "{error}");
        assert!(
            error.message.contains("Group::\"licenced-banks\""),
            "{error}"
        );
    }

    /// A hidden policy file fails the load, named: a directory's bundle
    /// leaves hidden files out, and the instance's gateways would run
    /// without its rules.
    #[test]
    fn a_hidden_policy_file_fails_the_load() {
        let (dir, config_path) = setup(true);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join(".deny-kyc.cedar"),
            "@id(\"deny-kyc\")\nforbid (principal, action, resource);\n",
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let error = PolicyEngine::load(&config).unwrap_err();
        assert!(error.file.ends_with(".deny-kyc.cedar"), "{error}");
        assert!(error.message.contains("hidden policy file"), "{error}");
    }

    /// Consent is bound to the person a request names: a policy asking for
    /// it on a method whose request names nobody fails the load.
    #[test]
    fn consent_on_a_method_without_a_data_subject_fails_the_load() {
        let (dir, config_path) = setup(true);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join("upload.cedar"),
            "// Withholdings with consent.\n\
             @id(\"withholdings-with-consent\")\n\
             permit (\n  principal,\n  \
             action == Action::\"/govbridge.tax.v1.TaxAuthority/SubmitWithholdings\",\n  \
             resource\n)\nwhen { context has consent && context.consent.verified };\n",
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let error = PolicyEngine::load(&config).unwrap_err();
        assert!(error.file.ends_with("upload.cedar"), "{error}");
        assert_eq!(error.position.map(|(line, _)| line), Some(2), "{error}");
        assert!(
            error.message.contains("withholdings-with-consent")
                && error.message.contains("SubmitWithholdings")
                && error.message.contains("data_subject"),
            "{error}"
        );

        // The same condition on a method whose request names its subject
        // loads.
        std::fs::write(
            policies.join("upload.cedar"),
            "@id(\"income-with-consent\")\n\
             permit (principal, action == Action::\"/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome\", resource)\n\
             when { context.consent.verified };\n",
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        PolicyEngine::load(&config).unwrap();
    }

    /// A forbid that fails to evaluate denies: Cedar alone would skip it
    /// and let the permit through.
    #[test]
    fn a_failing_forbid_denies() {
        let (dir, config_path) = setup(false);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join("overflow.cedar"),
            r#"
@id("everything") permit (principal, action, resource);
@id("overflowing") forbid (principal, action, resource)
when { context.certificate_days_left * 9223372036854775807 > 0 };
"#,
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let engine = PolicyEngine::load(&config).unwrap();
        let caller = MemberId::parse("SN/COM/CBAO/kyc").unwrap();
        let provider = MemberId::parse("SN/GOV/ANEC/civil-registry").unwrap();
        let facts = |days| CallFacts {
            scope: CallScope {
                caller: &caller,
                method: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
                provider: &provider,
                purpose: Some("KYC"),
            },
            has_reason: true,
            has_user_id: true,
            consent_verified: false,
            hour: 12,
            certificate_days_left: days,
        };
        // 0 days: the product is 0, the forbid evaluates to false.
        assert!(engine.authorize(&facts(0)).allowed);
        // 30 days: the product overflows, the forbid fails, the call is denied.
        let decision = engine.authorize(&facts(30));
        assert!(!decision.allowed);
        assert_eq!(decision.policies, ["overflowing"]);
        assert!(!decision.errors.is_empty());
    }

    /// A lawful-basis permit conceals the accesses it allows from the Data
    /// Tracker for its number of days; a malformed annotation fails the
    /// load, naming the line.
    #[test]
    fn conceal_days_sets_the_disclosure_date() {
        let (dir, config_path) = setup(false);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join("investigation.cedar"),
            r#"
@id("fraud-investigation") @conceal_days("180")
permit (principal == Member::"SN/GOV/DGID/tax", action, resource);
@id("everyone-else") permit (principal, action, resource);
"#,
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let engine = PolicyEngine::load(&config).unwrap();
        let provider = MemberId::parse("SN/GOV/ANEC/civil-registry").unwrap();
        let decide = |caller: &str| {
            let caller = MemberId::parse(caller).unwrap();
            engine.authorize(&CallFacts {
                scope: CallScope {
                    caller: &caller,
                    method: "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
                    provider: &provider,
                    purpose: None,
                },
                has_reason: false,
                has_user_id: false,
                consent_verified: false,
                hour: 12,
                certificate_days_left: 30,
            })
        };
        let concealed = decide("SN/GOV/DGID/tax");
        assert_eq!(
            engine.concealed_until(&concealed, 1000),
            1000 + 180 * 86_400
        );
        let plain = decide("SN/COM/CBAO/kyc");
        assert!(plain.allowed);
        assert_eq!(engine.concealed_until(&plain, 1000), 0);

        std::fs::write(
            policies.join("investigation.cedar"),
            "@id(\"bad\")\n@conceal_days(\"forever\")\npermit (principal, action, resource);\n",
        )
        .unwrap();
        let error = PolicyEngine::load(&Config::load(&config_path).unwrap()).unwrap_err();
        assert_eq!(error.position.map(|(line, _)| line), Some(2), "{error}");
        assert!(error.message.contains("1 to 3650 days"), "{error}");
    }

    /// The per-(caller, method) index, and the decisions it keeps, must
    /// decide exactly as Cedar does with every policy, for every member,
    /// method, provider, purpose and flag, including scopes on
    /// organizations, `is ... in`, action groups and unconstrained forbids.
    #[test]
    fn indexed_decisions_equal_full_decisions() {
        let (dir, config_path) = setup(true);
        let policies = dir.path().join("policies");
        std::fs::write(
            policies.join("scopes.cedar"),
            r#"
@id("org-scope")
permit (principal in Organization::"SN/COM/CBAO", action in Action::"govbridge.tax.v1.TaxAuthority", resource)
when { context.purpose == "AML" };
@id("is-in-scope")
permit (principal is Member in Group::"ministries", action, resource is Provider in Group::"account-verification")
when { context.hour < 8 };
@id("forbid-ecobank-evenings")
forbid (principal in Organization::"SN/COM/ECOBANK", action, resource) when { context.hour >= 18 };
"#,
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap();
        let engine = PolicyEngine::load(&config).unwrap();
        let purposes: Vec<Option<&str>> = std::iter::once(None)
            .chain(config.purposes.keys().map(|p| Some(p.as_str())))
            .collect();
        let mut compared = 0;
        let mut allowed = 0;
        for member in config.members.keys() {
            for (method, providers) in engine.methods() {
                for provider in providers {
                    for purpose in &purposes {
                        for (consent, hour) in [(false, 7), (true, 12), (false, 19)] {
                            let facts = CallFacts {
                                scope: CallScope {
                                    caller: member,
                                    method,
                                    provider,
                                    purpose: *purpose,
                                },
                                has_reason: true,
                                has_user_id: true,
                                consent_verified: consent,
                                hour,
                                certificate_days_left: 30,
                            };
                            let indexed = engine.authorize(&facts);
                            let full =
                                engine.decide(&request(&facts, None).unwrap(), &engine.policies);
                            assert_eq!(indexed, full, "{facts:?}");
                            // Asked again, the engine answers from what it kept.
                            assert_eq!(engine.authorize(&facts), full, "kept: {facts:?}");
                            compared += 1;
                            allowed += usize::from(indexed.allowed);
                        }
                    }
                }
            }
        }
        assert!(
            compared > 1_000 && allowed > 50,
            "{compared} compared, {allowed} allowed"
        );
    }
}
