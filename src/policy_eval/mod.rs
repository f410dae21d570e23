//! An evaluator of AWS IAM policies, tenantry's own.
//!
//! The local AWS (moto 5.2.5) evaluates neither resource policies (bucket
//! and key policies) nor conditions (docs/security.md, "What moto
//! enforces"), so a test that a bucket, key or role policy isolates tenants
//! cannot rely on it. This module decides one request against the policies
//! the way AWS documents it ("Policy evaluation logic", "IAM JSON policy
//! elements"), for requests within one account:
//!
//! - [`evaluate`]: identity policies plus an optional resource policy (an S3
//!   bucket policy and the like). An explicit Deny anywhere wins; otherwise
//!   an Allow in an identity policy, or an Allow of the resource policy that
//!   names the caller (or `*`), allows. A resource policy's Allow naming the
//!   caller's account only delegates to the identity policies.
//! - [`evaluate_kms`] and [`evaluate_trust`]: a KMS key policy and a role
//!   trust policy must themselves allow, naming the caller, or delegate to
//!   the account, and then an identity policy must allow as well.
//!
//! A policy this evaluator cannot read exactly is refused with a
//! [`PolicyError`] instead of being read approximately: a test that treated
//! an unknown operator or a misspelt element as matching (or as absent)
//! would pass for the wrong reason. Left out, and refused when met: the
//! Date, IpAddress and Binary operators, `ForAnyValue:`/`ForAllValues:` on
//! numbers and booleans, S3 canonical-user principals. Not modelled at all,
//! as a [`Request`] cannot express them: permissions boundaries, session
//! policies, SCPs and RCPs, KMS grants, cross-account requests.

mod condition;
mod pattern;
mod principal;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::Value;

use self::condition::Condition;
use self::pattern::{ArnPattern, Resolved, Template};
use self::principal::{Caller, Entry, Reach};

/// One request as IAM sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `aws:PrincipalArn`: a user's ARN, a role's ARN for a session of that
    /// role, the account's root; or a service or identity provider's name.
    pub principal_arn: String,
    /// `aws:PrincipalAccount`, the account of the principal.
    pub account: String,
    /// e.g. `s3:GetObject`, `kms:Decrypt`.
    pub action: String,
    /// The resource's ARN (`arn:aws:s3:::bucket/key`, a key's ARN), or `*`
    /// for an action on no resource.
    pub resource: String,
    /// Every other condition key and its values, e.g. `aws:SecureTransport`
    /// => `["true"]`. Keys are matched regardless of case. The session name
    /// of a role, which some Principal elements name, comes from
    /// `aws:userid` (`ROLE-ID:SESSION-NAME`).
    pub context: BTreeMap<String, Vec<String>>,
}

impl Request {
    /// A request by `principal_arn`, whose account is read from the ARN.
    pub fn new(
        principal_arn: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        let principal_arn = principal_arn.into();
        let account = principal::arn_parts(&principal_arn)
            .map(|parts| parts[4].to_string())
            .unwrap_or_default();
        Self {
            principal_arn,
            account,
            action: action.into(),
            resource: resource.into(),
            context: BTreeMap::new(),
        }
    }

    /// The request with one more value of the condition key `key`; calling
    /// it again with the same key makes the key multivalued.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context
            .entry(key.into())
            .or_default()
            .push(value.into());
        self
    }

    /// The values of a condition key, `None` when the request has none.
    /// `aws:PrincipalArn` and `aws:PrincipalAccount` are the request's own
    /// fields; [`Request::check`] refuses them in the context.
    fn lookup(&self, key: &str) -> Option<Vec<&str>> {
        if key.eq_ignore_ascii_case("aws:PrincipalArn") {
            return self
                .principal_arn
                .starts_with("arn:")
                .then(|| vec![self.principal_arn.as_str()]);
        }
        if key.eq_ignore_ascii_case("aws:PrincipalAccount") {
            return (!self.account.is_empty()).then(|| vec![self.account.as_str()]);
        }
        let values: Vec<&str> = self
            .context
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .collect();
        (!values.is_empty()).then_some(values)
    }

    /// A context that also sets `aws:PrincipalArn` or `aws:PrincipalAccount`
    /// is refused: which of the two values a condition saw would be a guess.
    fn check(&self) -> Result<(), PolicyError> {
        for key in self.context.keys() {
            if key.eq_ignore_ascii_case("aws:PrincipalArn")
                || key.eq_ignore_ascii_case("aws:PrincipalAccount")
            {
                return Err(PolicyError::InvalidRequest {
                    reason: format!("{key} comes from the request's principal, not its context"),
                });
            }
        }
        Ok(())
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A Deny statement applies; `sid` is that of the first one found
    /// (identity policies in order, then the resource policy).
    ExplicitDeny {
        sid: Option<String>,
    },
    /// Nothing denies, nothing allows.
    ImplicitDeny,
}

/// A policy or request this evaluator refuses to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{at}: unknown element {element}")]
    UnknownElement { at: String, element: String },
    #[error("{at}: missing {element}")]
    MissingElement { at: String, element: &'static str },
    #[error("{at}: {first} and {second} together")]
    ConflictingElements {
        at: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("{at}: {element} has no place in {policy}")]
    ProhibitedElement {
        at: String,
        element: &'static str,
        policy: &'static str,
    },
    #[error("{at}: {element} {value}: {reason}")]
    InvalidValue {
        at: String,
        element: String,
        value: String,
        reason: &'static str,
    },
    #[error("{at}: unknown condition operator {operator}")]
    UnknownOperator { at: String, operator: String },
    /// Valid IAM that this evaluator does not implement.
    #[error("{at}: {what} is not implemented by this evaluator")]
    Unsupported { at: String, what: String },
    /// The policy names a session of the caller's role, and the request does
    /// not say which session it is (`aws:userid`).
    #[error("{at}: names a session of role {role}, and the request gives no aws:userid")]
    SessionUnknown { at: String, role: String },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
}

/// Same-account evaluation: the identity policies of the principal plus the
/// resource's policy, if any (a bucket policy; not a key or trust policy,
/// see [`evaluate_kms`], [`evaluate_trust`]).
pub fn evaluate(
    identity_policies: &[Value],
    resource_policy: Option<&Value>,
    request: &Request,
) -> Result<Decision, PolicyError> {
    request.check()?;
    let caller = Caller::of(request)?;
    let identity = parse_identity(identity_policies)?;
    let resource = resource_policy
        .map(|p| Policy::parse(p, Kind::Resource, "resource policy".to_string()))
        .transpose()?;
    let identity = tally(&identity, &caller, request)?;
    let resource = tally(resource.as_slice(), &caller, request)?;
    if let Some(sid) = identity.deny.or(resource.deny) {
        return Ok(Decision::ExplicitDeny { sid });
    }
    // AWS: the root user has every permission in its account that no
    // explicit Deny takes away (KMS keys and role trust excepted).
    let identity_allows = identity.allow.is_some() || caller.is_root();
    Ok(
        if identity_allows || resource.allow == Some(Reach::Direct) {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        },
    )
}

/// Evaluation against a KMS key policy, which must allow on its own: either
/// naming the caller (then no identity policy is needed), or naming the
/// caller's account (`arn:aws:iam::ACCOUNT:root` or `ACCOUNT`), which lets
/// an identity policy's Allow count. Without the key policy's permission no
/// identity policy allows, not even the root user's.
pub fn evaluate_kms(
    identity_policies: &[Value],
    key_policy: &Value,
    request: &Request,
) -> Result<Decision, PolicyError> {
    gated(identity_policies, key_policy, Kind::Key, request)
}

/// Evaluation of `sts:AssumeRole*` against the role's trust policy, which,
/// like a key policy, must allow on its own by naming the caller, or name
/// the caller's account and leave the rest to an identity policy's Allow.
pub fn evaluate_trust(
    identity_policies: &[Value],
    trust_policy: &Value,
    request: &Request,
) -> Result<Decision, PolicyError> {
    gated(identity_policies, trust_policy, Kind::Trust, request)
}

fn gated(
    identity_policies: &[Value],
    gate: &Value,
    kind: Kind,
    request: &Request,
) -> Result<Decision, PolicyError> {
    request.check()?;
    let caller = Caller::of(request)?;
    // AWS does not let the root user assume a role at all; a trust policy
    // naming the account would otherwise seem to let it in.
    if kind == Kind::Trust && caller.is_root() {
        return Err(PolicyError::InvalidRequest {
            reason: "the root user cannot assume a role".to_string(),
        });
    }
    let identity = parse_identity(identity_policies)?;
    let gate = Policy::parse(gate, kind, kind.name().to_string())?;
    let identity = tally(&identity, &caller, request)?;
    let gate = tally(std::slice::from_ref(&gate), &caller, request)?;
    if let Some(sid) = identity.deny.or(gate.deny) {
        return Ok(Decision::ExplicitDeny { sid });
    }
    Ok(match gate.allow {
        Some(Reach::Direct) => Decision::Allow,
        Some(Reach::Account) if identity.allow.is_some() => Decision::Allow,
        _ => Decision::ImplicitDeny,
    })
}

fn parse_identity(policies: &[Value]) -> Result<Vec<Policy>, PolicyError> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| Policy::parse(p, Kind::Identity, format!("identity policy [{i}]")))
        .collect()
}

/// What the statements of some policies decide for one request.
#[derive(Debug, Default)]
struct Tally {
    /// The Sid of the first applicable Deny, if one applies.
    deny: Option<Option<String>>,
    /// How far the applicable Allows reach the caller, at best.
    allow: Option<Reach>,
}

/// Every statement is evaluated, not just those before the first Deny, so
/// that a request a later statement cannot decide is refused whatever the
/// order.
fn tally(
    policies: &[Policy],
    caller: &Caller<'_>,
    request: &Request,
) -> Result<Tally, PolicyError> {
    let mut tally = Tally::default();
    for statement in policies.iter().flat_map(|p| &p.statements) {
        let reach = statement.reach(caller, request)?;
        if reach == Reach::None {
            continue;
        }
        match statement.effect {
            // A Deny naming the account denies everyone in it.
            Effect::Deny => {
                if tally.deny.is_none() {
                    tally.deny = Some(statement.sid.clone());
                }
            }
            Effect::Allow => tally.allow = tally.allow.max(Some(reach)),
        }
    }
    Ok(tally)
}

/// Which kind of policy a document is: it decides which elements a
/// statement must, may and may not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identity,
    Resource,
    Key,
    Trust,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Identity => "identity policy",
            Kind::Resource => "resource policy",
            Kind::Key => "key policy",
            Kind::Trust => "trust policy",
        }
    }
}

#[derive(Debug)]
struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// A list element and whether it is the Not form (NotAction, NotResource,
/// NotPrincipal).
#[derive(Debug)]
struct Listed<T> {
    not: bool,
    items: Vec<T>,
}

#[derive(Debug)]
enum ResourcePattern {
    /// The lone `*`: every resource, including the `*` of actions on none.
    Any,
    Arn(ArnPattern),
}

#[derive(Debug)]
struct Statement {
    at: String,
    sid: Option<String>,
    effect: Effect,
    actions: Listed<Resolved>,
    resources: Option<Listed<ResourcePattern>>,
    principals: Option<Listed<Entry>>,
    conditions: Vec<Condition>,
}

const POLICY_ELEMENTS: [&str; 3] = ["Version", "Id", "Statement"];
const STATEMENT_ELEMENTS: [&str; 9] = [
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Principal",
    "NotPrincipal",
    "Condition",
];

impl Policy {
    fn parse(document: &Value, kind: Kind, name: String) -> Result<Self, PolicyError> {
        let Value::Object(map) = document else {
            return Err(PolicyError::InvalidValue {
                at: name,
                element: "policy".into(),
                value: document.to_string(),
                reason: "a policy is a JSON object",
            });
        };
        if let Some(element) = map.keys().find(|k| !POLICY_ELEMENTS.contains(&k.as_str())) {
            return Err(PolicyError::UnknownElement {
                at: name,
                element: element.clone(),
            });
        }
        // Policy variables exist from version 2012-10-17 on; without a
        // Version (or with 2008-10-17) `${...}` is literal text.
        let variables = match map.get("Version") {
            None => false,
            Some(Value::String(v)) if v == "2008-10-17" => false,
            Some(Value::String(v)) if v == "2012-10-17" => true,
            Some(v) => {
                return Err(PolicyError::InvalidValue {
                    at: name,
                    element: "Version".into(),
                    value: v.to_string(),
                    reason: "the policy language versions are 2012-10-17 and 2008-10-17",
                });
            }
        };
        if let Some(id) = map.get("Id").filter(|id| !id.is_string()) {
            return Err(PolicyError::InvalidValue {
                at: name,
                element: "Id".into(),
                value: id.to_string(),
                reason: "an Id is a string",
            });
        }
        let statements = match map.get("Statement") {
            None => {
                return Err(PolicyError::MissingElement {
                    at: name,
                    element: "Statement",
                });
            }
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one) => vec![one],
        };
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(i, s)| Statement::parse(s, kind, &format!("{name} statement [{i}]"), variables))
            .collect::<Result<_, _>>()?;
        Ok(Self { statements })
    }
}

impl Statement {
    fn parse(value: &Value, kind: Kind, at: &str, variables: bool) -> Result<Self, PolicyError> {
        let Value::Object(map) = value else {
            return Err(PolicyError::InvalidValue {
                at: at.to_string(),
                element: "Statement".into(),
                value: value.to_string(),
                reason: "a statement is a JSON object",
            });
        };
        let sid = match map.get("Sid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(PolicyError::InvalidValue {
                    at: at.to_string(),
                    element: "Sid".into(),
                    value: v.to_string(),
                    reason: "a Sid is a string",
                });
            }
        };
        // From here on the Sid names the statement in errors.
        let at = &match &sid {
            Some(sid) => format!("{at} (Sid {sid})"),
            None => at.to_string(),
        };
        if let Some(element) = map
            .keys()
            .find(|k| !STATEMENT_ELEMENTS.contains(&k.as_str()))
        {
            return Err(PolicyError::UnknownElement {
                at: at.clone(),
                element: element.clone(),
            });
        }
        let effect = match map.get("Effect") {
            None => {
                return Err(PolicyError::MissingElement {
                    at: at.clone(),
                    element: "Effect",
                });
            }
            Some(Value::String(e)) if e == "Allow" => Effect::Allow,
            Some(Value::String(e)) if e == "Deny" => Effect::Deny,
            Some(v) => {
                return Err(PolicyError::InvalidValue {
                    at: at.clone(),
                    element: "Effect".into(),
                    value: v.to_string(),
                    reason: "an Effect is \"Allow\" or \"Deny\"",
                });
            }
        };
        let actions = pair(map, at, "Action", "NotAction")?
            .ok_or_else(|| PolicyError::MissingElement {
                at: at.clone(),
                element: "Action or NotAction",
            })
            .and_then(|(not, element, value)| {
                let items = strings(value, at, element)?
                    .iter()
                    .map(|a| parse_action(a, at, element))
                    .collect::<Result<_, _>>()?;
                Ok(Listed { not, items })
            })?;
        let resources = match (kind, pair(map, at, "Resource", "NotResource")?) {
            (Kind::Trust, Some((_, element, _))) => {
                return Err(PolicyError::ProhibitedElement {
                    at: at.clone(),
                    element,
                    policy: kind.name(),
                });
            }
            (Kind::Trust, None) => None,
            (_, None) => {
                return Err(PolicyError::MissingElement {
                    at: at.clone(),
                    element: "Resource or NotResource",
                });
            }
            (_, Some((not, element, value))) => Some(Listed {
                not,
                items: strings(value, at, element)?
                    .iter()
                    .map(|r| parse_resource(r, at, element, variables))
                    .collect::<Result<_, _>>()?,
            }),
        };
        let principals = match (kind, pair(map, at, "Principal", "NotPrincipal")?) {
            (Kind::Identity, Some((_, element, _))) => {
                return Err(PolicyError::ProhibitedElement {
                    at: at.clone(),
                    element,
                    policy: kind.name(),
                });
            }
            (Kind::Identity, None) => None,
            (_, None) => {
                return Err(PolicyError::MissingElement {
                    at: at.clone(),
                    element: "Principal or NotPrincipal",
                });
            }
            (_, Some((not, element, value))) => Some(Listed {
                not,
                items: principal::parse(value, at, element)?,
            }),
        };
        let conditions = match map.get("Condition") {
            None => Vec::new(),
            Some(c) => condition::parse(c, at, variables)?,
        };
        Ok(Self {
            at: at.clone(),
            sid,
            effect,
            actions,
            resources,
            principals,
            conditions,
        })
    }

    /// How far the statement reaches the request: `None` when it does not
    /// apply (action, resource, principal or a condition fails, or a policy
    /// variable cannot be resolved); an identity policy's statement that
    /// applies reaches its principal directly.
    fn reach(&self, caller: &Caller<'_>, request: &Request) -> Result<Reach, PolicyError> {
        let action = self
            .actions
            .items
            .iter()
            .any(|a| a.matches(&request.action, true));
        if action == self.actions.not {
            return Ok(Reach::None);
        }
        if let Some(resources) = &self.resources {
            let mut matched = false;
            for pattern in &resources.items {
                matched |= match pattern {
                    ResourcePattern::Any => true,
                    ResourcePattern::Arn(arn) => match arn.resolve(request) {
                        Some(arn) => arn.matches(&request.resource),
                        // An unresolvable variable invalidates the statement.
                        None => return Ok(Reach::None),
                    },
                };
            }
            if matched == resources.not {
                return Ok(Reach::None);
            }
        }
        let reach = match &self.principals {
            None => Reach::Direct,
            Some(Listed { not: false, items }) => principal::reach(items, caller, &self.at)?,
            Some(Listed { not: true, items }) => {
                if principal::not_principal_applies(items, caller, &self.at)? {
                    Reach::Direct
                } else {
                    Reach::None
                }
            }
        };
        if reach == Reach::None {
            return Ok(reach);
        }
        for condition in &self.conditions {
            match condition.holds(request, &self.at)? {
                Some(true) => {}
                Some(false) | None => return Ok(Reach::None),
            }
        }
        Ok(reach)
    }
}

/// The one of an element and its Not form that the statement has, with the
/// element's name: both together are refused.
fn pair<'v>(
    map: &'v serde_json::Map<String, Value>,
    at: &str,
    element: &'static str,
    not_element: &'static str,
) -> Result<Option<(bool, &'static str, &'v Value)>, PolicyError> {
    match (map.get(element), map.get(not_element)) {
        (Some(_), Some(_)) => Err(PolicyError::ConflictingElements {
            at: at.to_string(),
            first: element,
            second: not_element,
        }),
        (Some(v), None) => Ok(Some((false, element, v))),
        (None, Some(v)) => Ok(Some((true, not_element, v))),
        (None, None) => Ok(None),
    }
}

/// A string or a non-empty list of strings.
fn strings(value: &Value, at: &str, element: &str) -> Result<Vec<String>, PolicyError> {
    let invalid = || PolicyError::InvalidValue {
        at: at.to_string(),
        element: element.to_string(),
        value: value.to_string(),
        reason: "expected a string or a non-empty list of strings",
    };
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

/// `*`, or `service:pattern`; actions take wildcards but no variables, and
/// match regardless of case.
fn parse_action(action: &str, at: &str, element: &str) -> Result<Resolved, PolicyError> {
    let well_formed = action == "*"
        || action.split_once(':').is_some_and(|(service, name)| {
            !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !name.is_empty()
        });
    if !well_formed {
        return Err(PolicyError::InvalidValue {
            at: at.to_string(),
            element: element.to_string(),
            value: action.to_string(),
            reason: "an action is \"*\" or service:action",
        });
    }
    Template::parse(action, false)
        .map(|t| t.fixed())
        .map_err(|reason| PolicyError::InvalidValue {
            at: at.to_string(),
            element: element.to_string(),
            value: action.to_string(),
            reason,
        })
}

/// `*`, or an ARN whose six segments are matched each on its own.
fn parse_resource(
    resource: &str,
    at: &str,
    element: &str,
    variables: bool,
) -> Result<ResourcePattern, PolicyError> {
    let invalid = |reason| PolicyError::InvalidValue {
        at: at.to_string(),
        element: element.to_string(),
        value: resource.to_string(),
        reason,
    };
    let template = Template::parse(resource, variables).map_err(invalid)?;
    if template.is_lone_wildcard() {
        return Ok(ResourcePattern::Any);
    }
    if !resource.starts_with("arn:") {
        return Err(invalid("a resource is \"*\" or an ARN"));
    }
    ArnPattern::parse(&template)
        .map(ResourcePattern::Arn)
        .ok_or_else(|| invalid("a resource ARN has six colon-separated parts"))
}
