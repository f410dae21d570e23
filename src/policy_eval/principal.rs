//! Who makes the request (`Caller`) and whom a Principal or NotPrincipal
//! element names (`Entry`).

use serde_json::Value;

use super::{PolicyError, Request};

/// The principal of a request, as the Principal element sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller<'a> {
    /// The account's root user.
    Root {
        account: &'a str,
    },
    User {
        arn: &'a str,
        account: &'a str,
    },
    /// A session of the role `arn`. The session's name is known only when
    /// the request carries `aws:userid` (`ROLE-ID:SESSION-NAME`).
    Role {
        arn: &'a str,
        account: &'a str,
        name: &'a str,
        session: Option<&'a str>,
    },
    FederatedUser {
        arn: &'a str,
        account: &'a str,
    },
    /// A service (`s3.amazonaws.com`) or an identity provider
    /// (`arn:aws:iam::111122223333:oidc-provider/...`,
    /// `cognito-identity.amazonaws.com`), named by Service or Federated.
    Named(&'a str),
}

/// How far a Principal element reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reach {
    None,
    /// Through the caller's account (`arn:aws:iam::ACCOUNT:root` or
    /// `ACCOUNT`): an Allow then delegates to the account's IAM policies,
    /// a Deny denies the whole account.
    Account,
    /// The caller itself, or everyone (`*`).
    Direct,
}

/// One principal a Principal or NotPrincipal element names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Everyone,
    Account(String),
    /// A user, a role or a federated user, by ARN.
    Arn(String),
    /// One session of a role; its ARN carries the role's name but not its
    /// path.
    Session {
        account: String,
        role: String,
        session: String,
    },
    /// A service or an identity provider.
    Named(String),
}

impl<'a> Caller<'a> {
    pub(super) fn of(request: &'a Request) -> Result<Self, PolicyError> {
        let invalid = |reason: String| Err(PolicyError::InvalidRequest { reason });
        let arn = request.principal_arn.as_str();
        let Some(parts) = arn_parts(arn) else {
            if arn.is_empty() || arn.starts_with("arn:") {
                return invalid(format!(
                    "principal {arn:?} is not an ARN nor a service name"
                ));
            }
            return Ok(Caller::Named(arn));
        };
        let [_, _, service, _, account, resource] = parts;
        if !account.is_empty() && account != request.account {
            return invalid(format!(
                "account {:?} is not the account of principal {arn}",
                request.account
            ));
        }
        let caller = match (service, resource) {
            ("iam", "root") => Caller::Root { account },
            ("iam", r) if r.starts_with("user/") => Caller::User { arn, account },
            ("iam", r) if r.starts_with("role/") => Caller::Role {
                arn,
                account,
                name: r.rsplit('/').next().unwrap_or(r),
                session: session_name(request)?,
            },
            ("sts", r) if r.starts_with("federated-user/") => {
                Caller::FederatedUser { arn, account }
            }
            ("iam", r) if r.starts_with("saml-provider/") || r.starts_with("oidc-provider/") => {
                Caller::Named(arn)
            }
            ("sts", r) if r.starts_with("assumed-role/") => {
                return invalid(format!(
                    "principal {arn} is a session: aws:PrincipalArn of a session is its role's ARN \
                     (give the session's name in aws:userid)"
                ));
            }
            _ => {
                return invalid(format!(
                    "principal {arn} is of no kind this evaluator knows"
                ));
            }
        };
        Ok(caller)
    }

    pub(super) fn is_root(&self) -> bool {
        matches!(self, Caller::Root { .. })
    }

    fn account(&self) -> Option<&'a str> {
        match *self {
            Caller::Root { account }
            | Caller::User { account, .. }
            | Caller::Role { account, .. }
            | Caller::FederatedUser { account, .. } => Some(account),
            Caller::Named(_) => None,
        }
    }

    /// The ARN a Principal element names this caller by, other than its
    /// account and its session.
    fn arn(&self) -> Option<&'a str> {
        match *self {
            Caller::User { arn, .. }
            | Caller::Role { arn, .. }
            | Caller::FederatedUser { arn, .. } => Some(arn),
            Caller::Root { .. } | Caller::Named(_) => None,
        }
    }
}

/// The session name of `aws:userid` (`ROLE-ID:SESSION-NAME` for a role).
fn session_name(request: &Request) -> Result<Option<&str>, PolicyError> {
    match request.lookup("aws:userid").as_deref() {
        None => Ok(None),
        Some(&[userid]) => match userid.split_once(':') {
            Some((_, session)) if !session.is_empty() => Ok(Some(session)),
            _ => Err(PolicyError::InvalidRequest {
                reason: format!(
                    "aws:userid {userid:?} of a role session is not ROLE-ID:SESSION-NAME"
                ),
            }),
        },
        Some(_) => Err(PolicyError::InvalidRequest {
            reason: "aws:userid has more than one value".to_string(),
        }),
    }
}

/// The six colon-separated parts of an ARN, the last keeping any further
/// colons.
pub(super) fn arn_parts(arn: &str) -> Option<[&str; 6]> {
    let mut parts = arn.splitn(6, ':');
    let mut next = || parts.next();
    let all = [next()?, next()?, next()?, next()?, next()?, next()?];
    (all[0] == "arn" && !all[1].is_empty() && !all[2].is_empty()).then_some(all)
}

/// Parses a Principal or NotPrincipal element.
pub(super) fn parse(value: &Value, at: &str, element: &str) -> Result<Vec<Entry>, PolicyError> {
    let invalid = |reason: &'static str| PolicyError::InvalidValue {
        at: at.to_string(),
        element: element.to_string(),
        value: value.to_string(),
        reason,
    };
    let map = match value {
        Value::String(s) if s == "*" => return Ok(vec![Entry::Everyone]),
        Value::Object(map) if !map.is_empty() => map,
        _ => {
            return Err(invalid(
                "a principal is \"*\" or an object of AWS, Service or Federated",
            ));
        }
    };
    let mut entries = Vec::new();
    for (kind, names) in map {
        let names = super::strings(names, at, &format!("{element}.{kind}"))?;
        for name in names {
            let bad = |reason: &'static str| PolicyError::InvalidValue {
                at: at.to_string(),
                element: format!("{element}.{kind}"),
                value: name.clone(),
                reason,
            };
            let entry = match kind.as_str() {
                "AWS" => parse_aws(&name).map_err(bad)?,
                "Service" | "Federated" => {
                    if name.is_empty() || name.contains(['*', '?']) {
                        return Err(bad("a service or provider is named in full"));
                    }
                    Entry::Named(name)
                }
                "CanonicalUser" => {
                    return Err(PolicyError::Unsupported {
                        at: at.to_string(),
                        what: format!("{element}.CanonicalUser (S3 canonical user IDs)"),
                    });
                }
                _ => {
                    return Err(PolicyError::UnknownElement {
                        at: at.to_string(),
                        element: format!("{element}.{kind}"),
                    });
                }
            };
            entries.push(entry);
        }
    }
    Ok(entries)
}

fn parse_aws(name: &str) -> Result<Entry, &'static str> {
    if name == "*" {
        return Ok(Entry::Everyone);
    }
    if name.contains(['*', '?']) {
        return Err("a principal takes no wildcard but the lone \"*\"");
    }
    if is_account_id(name) {
        return Ok(Entry::Account(name.to_string()));
    }
    let Some([_, _, service, region, account, resource]) = arn_parts(name) else {
        return Err("an AWS principal is \"*\", an account ID or an IAM/STS ARN");
    };
    if !region.is_empty() || !is_account_id(account) {
        return Err("an AWS principal's ARN has no region and a 12-digit account");
    }
    match (service, resource) {
        ("iam", "root") => Ok(Entry::Account(account.to_string())),
        ("iam", r) if r.starts_with("user/") || r.starts_with("role/") => {
            Ok(Entry::Arn(name.to_string()))
        }
        ("sts", r) if r.starts_with("federated-user/") => Ok(Entry::Arn(name.to_string())),
        ("sts", r) => match r.split('/').collect::<Vec<_>>().as_slice() {
            ["assumed-role", role, session] if !role.is_empty() && !session.is_empty() => {
                Ok(Entry::Session {
                    account: account.to_string(),
                    role: role.to_string(),
                    session: session.to_string(),
                })
            }
            _ => Err("an STS principal is assumed-role/ROLE/SESSION or federated-user/NAME"),
        },
        _ => Err("an AWS principal's ARN is the root, a user, a role or a session"),
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// How far the entries of a Principal element reach the caller. A session
/// entry for the caller's role cannot be decided without the session's name;
/// that is an error only when no other entry reaches the caller directly.
pub(super) fn reach(
    entries: &[Entry],
    caller: &Caller<'_>,
    at: &str,
) -> Result<Reach, PolicyError> {
    let mut best = Reach::None;
    let mut undecided = None;
    for entry in entries {
        let reach = match entry {
            Entry::Everyone => Reach::Direct,
            Entry::Account(account) => match caller {
                Caller::Root { account: own } if own == account => Reach::Direct,
                _ if caller.account() == Some(account.as_str()) => Reach::Account,
                _ => Reach::None,
            },
            Entry::Arn(arn) => {
                if caller.arn() == Some(arn.as_str()) {
                    Reach::Direct
                } else {
                    Reach::None
                }
            }
            Entry::Session {
                account,
                role,
                session,
            } => match session_of(caller, account, role) {
                Some(Some(own)) if own == session => Reach::Direct,
                Some(None) => {
                    undecided = Some(entry);
                    Reach::None
                }
                _ => Reach::None,
            },
            Entry::Named(name) => {
                if *caller == Caller::Named(name) {
                    Reach::Direct
                } else {
                    Reach::None
                }
            }
        };
        best = best.max(reach);
    }
    match undecided {
        Some(entry) if best != Reach::Direct => Err(session_unknown(entry, at)),
        _ => Ok(best),
    }
}

/// Whether a statement with this NotPrincipal element applies to the caller.
///
/// AWS may check each identity behind a request on its own: the account,
/// then the user or the role, then the role's session. A Deny with
/// NotPrincipal therefore spares the caller only when the element names every
/// one of them (AWS's own examples list the account, the role and the
/// session); this evaluator takes that strict reading.
pub(super) fn not_principal_applies(
    entries: &[Entry],
    caller: &Caller<'_>,
    at: &str,
) -> Result<bool, PolicyError> {
    if entries.contains(&Entry::Everyone) {
        return Ok(false);
    }
    let account_named = |account: &str| entries.contains(&Entry::Account(account.to_string()));
    let arn_named = |arn: &str| entries.contains(&Entry::Arn(arn.to_string()));
    let spared = match *caller {
        Caller::Root { account } => account_named(account),
        Caller::User { arn, account } | Caller::FederatedUser { arn, account } => {
            account_named(account) && arn_named(arn)
        }
        Caller::Role {
            arn,
            account,
            session,
            ..
        } => {
            account_named(account) && arn_named(arn) && {
                let sessions: Vec<&Entry> = entries
                    .iter()
                    .filter(|e| match e {
                        Entry::Session { account, role, .. } => {
                            session_of(caller, account, role).is_some()
                        }
                        _ => false,
                    })
                    .collect();
                match (session, sessions.first()) {
                    (_, None) => false,
                    (None, Some(entry)) => return Err(session_unknown(entry, at)),
                    (Some(own), Some(_)) => sessions
                        .iter()
                        .any(|e| matches!(e, Entry::Session { session, .. } if session == own)),
                }
            }
        }
        Caller::Named(name) => entries.contains(&Entry::Named(name.to_string())),
    };
    Ok(!spared)
}

/// For a caller that is a session of `role` in `account`: `Some` of its
/// session name (itself `None` when unknown); `None` for any other caller.
fn session_of<'a>(caller: &Caller<'a>, account: &str, role: &str) -> Option<Option<&'a str>> {
    match *caller {
        Caller::Role {
            account: own_account,
            name,
            session,
            ..
        } if own_account == account && name == role => Some(session),
        _ => None,
    }
}

fn session_unknown(entry: &Entry, at: &str) -> PolicyError {
    let role = match entry {
        Entry::Session { role, .. } => role.clone(),
        _ => String::new(),
    };
    PolicyError::SessionUnknown {
        at: at.to_string(),
        role,
    }
}
