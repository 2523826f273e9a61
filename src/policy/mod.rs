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
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request,
    RestrictedExpression,
};

use crate::config::Config;
use crate::identity::MemberId;
pub use load::PolicyError;

/// The facts of one call that policies may look at.
#[derive(Debug, Clone)]
pub struct CallFacts<'a> {
    pub caller: &'a MemberId,
    /// `/package.Service/Method`.
    pub method: &'a str,
    pub provider: &'a MemberId,
    pub purpose: Option<&'a str>,
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
    /// (caller, method) -> the policies that can apply to it. Cedar
    /// evaluates every policy of the set it is given, so deciding with
    /// only these keeps a decision's cost independent of how many policies
    /// concern other members and methods. Bounded by members x methods.
    applicable: RwLock<HashMap<(MemberId, String), Arc<PolicySet>>>,
    entities: Entities,
    sources: HashMap<String, PolicySource>,
    /// Members to whom at least one permit could apply, judging by the
    /// permits' principal scopes. A member outside it is refused at once.
    may_be_permitted: HashSet<MemberId>,
    /// Published method -> its providers.
    methods: BTreeMap<String, Vec<MemberId>>,
    purposes: Vec<String>,
    authorizer: Authorizer,
}

pub(crate) const MEMBER: &str = "Member";
pub(crate) const ORGANIZATION: &str = "Organization";
pub(crate) const GROUP: &str = "Group";
pub(crate) const PROVIDER: &str = "Provider";
pub(crate) const ACTION: &str = "Action";

/// `Type::"id"` as a Cedar entity uid.
pub(crate) fn uid(type_name: &str, id: &str) -> EntityUid {
    // Type names here are constants that always parse.
    let type_name: EntityTypeName = type_name
        .parse()
        .unwrap_or_else(|_| unreachable!("entity type names are constants"));
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

impl PolicyEngine {
    /// Loads and validates the schema and policies a configuration names,
    /// and builds the entities of its member registry.
    pub fn load(config: &Config) -> Result<Self, PolicyError> {
        load::load(config)
    }

    /// Decides one call.
    pub fn authorize(&self, facts: &CallFacts<'_>) -> Decision {
        let context = Context::from_pairs([
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(facts.purpose.unwrap_or_default().to_owned()),
            ),
            (
                "has_reason".to_owned(),
                RestrictedExpression::new_bool(facts.has_reason),
            ),
            (
                "has_user_id".to_owned(),
                RestrictedExpression::new_bool(facts.has_user_id),
            ),
            (
                "consent".to_owned(),
                RestrictedExpression::new_record([(
                    "verified".to_owned(),
                    RestrictedExpression::new_bool(facts.consent_verified),
                )])
                .unwrap_or_else(|_| RestrictedExpression::new_bool(false)),
            ),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(i64::from(facts.hour)),
            ),
            (
                "certificate_days_left".to_owned(),
                RestrictedExpression::new_long(facts.certificate_days_left),
            ),
        ]);
        let deny = |error: String| Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        };
        let context = match context {
            Ok(context) => context,
            Err(error) => return deny(error.to_string()),
        };
        let request = match Request::new(
            uid(MEMBER, facts.caller.as_str()),
            uid(ACTION, facts.method),
            uid(PROVIDER, facts.provider.as_str()),
            context,
            None,
        ) {
            Ok(request) => request,
            Err(error) => return deny(error.to_string()),
        };
        let policies = self.applicable(facts.caller, facts.method);
        let response = self
            .authorizer
            .is_authorized(&request, &policies, &self.entities);
        let diagnostics = response.diagnostics();
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(ToString::to_string).collect(),
        }
    }

    /// The policies whose scope covers `caller` calling `method`.
    fn applicable(&self, caller: &MemberId, method: &str) -> Arc<PolicySet> {
        let key = (caller.clone(), method.to_owned());
        if let Some(set) = self
            .applicable
            .read()
            .ok()
            .and_then(|cache| cache.get(&key).cloned())
        {
            return set;
        }
        let mut set = PolicySet::new();
        for scoped in self.by_method.get(method).into_iter().flatten() {
            let covers = scoped
                .principals
                .as_ref()
                .is_none_or(|members| members.contains(caller));
            // Ids are unique in `self.policies`, so adding cannot fail.
            if covers && set.add(scoped.policy.clone()).is_err() {
                tracing::error!(policy = %scoped.policy.id(), "policy index inconsistent");
            }
        }
        let set = Arc::new(set);
        if let Ok(mut cache) = self.applicable.write() {
            cache.insert(key, set.clone());
        }
        set
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
    /// under which a call with a reason, a user id and verified consent at
    /// noon would be allowed. An empty purpose means "without a purpose".
    pub fn permits(&self, member: &MemberId, certificate_days_left: i64) -> Vec<Permit> {
        let mut permits = Vec::new();
        let candidates: Vec<Option<&str>> = std::iter::once(None)
            .chain(self.purposes.iter().map(|purpose| Some(purpose.as_str())))
            .collect();
        for (method, providers) in &self.methods {
            for provider in providers {
                let purposes: Vec<String> = candidates
                    .iter()
                    .filter(|purpose| {
                        self.authorize(&CallFacts {
                            caller: member,
                            method,
                            provider,
                            purpose: **purpose,
                            has_reason: true,
                            has_user_id: true,
                            consent_verified: true,
                            hour: 12,
                            certificate_days_left,
                        })
                        .allowed
                    })
                    .map(|purpose| purpose.unwrap_or_default().to_owned())
                    .collect();
                if !purposes.is_empty() {
                    permits.push(Permit {
                        method: method.clone(),
                        provider: provider.clone(),
                        purposes,
                    });
                }
            }
        }
        permits
    }
}

/// What a member may call, for `policy check` and the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub method: String,
    pub provider: MemberId,
    pub purposes: Vec<String>,
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
            let own = uid(ACTION, method);
            let service = method
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .map(|(service, _)| uid(ACTION, service));
            let covered = match &action {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(target) => *target == own,
                ActionConstraint::In(targets) => targets
                    .iter()
                    .any(|target| *target == own || Some(target) == service.as_ref()),
            };
            if covered {
                index.entry(method.clone()).or_default().push(ScopedPolicy {
                    policy: policy.clone(),
                    principals: principals.clone(),
                });
            }
        }
    }
    index
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
