//! The Condition element: operators, `...IfExists`, `ForAnyValue:` and
//! `ForAllValues:`, and what an absent key means to each.

use serde_json::Value;

use super::pattern::{ArnPattern, ResolvedArn, Template};
use super::{PolicyError, Request};

/// One key tested by one operator, e.g. `"Bool": {"aws:SecureTransport": "false"}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    set: Option<SetOperator>,
    if_exists: bool,
    test: Test,
    key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOperator {
    /// `ForAnyValue:`: some value of the request's key passes.
    AnyValue,
    /// `ForAllValues:`: every value of the request's key passes (and an
    /// absent key passes).
    AllValues,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    String {
        negated: bool,
        like: bool,
        ignore_case: bool,
        values: Vec<Template>,
    },
    Arn {
        negated: bool,
        values: Vec<ArnPattern>,
    },
    Numeric {
        negated: bool,
        compare: Compare,
        values: Vec<f64>,
    },
    Bool(Vec<bool>),
    /// `Null`: `true` passes when the key is absent, `false` when present.
    Null(Vec<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Equals,
    LessThan,
    LessThanEquals,
    GreaterThan,
    GreaterThanEquals,
}

/// Parses a Condition element: every operator, every key.
pub(super) fn parse(
    value: &Value,
    at: &str,
    variables: bool,
) -> Result<Vec<Condition>, PolicyError> {
    let invalid =
        |element: String, value: &Value, reason: &'static str| PolicyError::InvalidValue {
            at: at.to_string(),
            element,
            value: value.to_string(),
            reason,
        };
    let Value::Object(operators) = value else {
        return Err(invalid(
            "Condition".into(),
            value,
            "a condition is an object of operators",
        ));
    };
    let mut conditions = Vec::new();
    for (operator, keys) in operators {
        let element = format!("Condition.{operator}");
        let Value::Object(keys) = keys else {
            return Err(invalid(
                element,
                keys,
                "an operator takes an object of keys",
            ));
        };
        if keys.is_empty() {
            return Err(invalid(
                element,
                &Value::Object(keys.clone()),
                "an operator tests no key",
            ));
        }
        let (set, if_exists, kind) = parse_operator(operator, at)?;
        for (key, values) in keys {
            let element = format!("{element}.{key}");
            if key.is_empty() {
                return Err(invalid(element, values, "a condition key has a name"));
            }
            let values = condition_values(values).ok_or_else(|| {
                invalid(
                    element.clone(),
                    values,
                    "condition values are strings, numbers or booleans, one or a non-empty list",
                )
            })?;
            let test =
                kind.test(&values, variables)
                    .map_err(|reason| PolicyError::InvalidValue {
                        at: at.to_string(),
                        element: element.clone(),
                        value: format!("{values:?}"),
                        reason,
                    })?;
            conditions.push(Condition {
                set,
                if_exists,
                test,
                key: key.clone(),
            });
        }
    }
    Ok(conditions)
}

/// The operators by family, before their values are parsed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    String {
        negated: bool,
        like: bool,
        ignore_case: bool,
    },
    Arn {
        negated: bool,
    },
    Numeric {
        negated: bool,
        compare: Compare,
    },
    Bool,
    Null,
}

fn parse_operator(
    operator: &str,
    at: &str,
) -> Result<(Option<SetOperator>, bool, Kind), PolicyError> {
    let (set, rest) = if let Some(rest) = operator.strip_prefix("ForAnyValue:") {
        (Some(SetOperator::AnyValue), rest)
    } else if let Some(rest) = operator.strip_prefix("ForAllValues:") {
        (Some(SetOperator::AllValues), rest)
    } else {
        (None, operator)
    };
    let (if_exists, base) = match rest.strip_suffix("IfExists") {
        Some(base) => (true, base),
        None => (false, rest),
    };
    let string = |negated, like, ignore_case| Kind::String {
        negated,
        like,
        ignore_case,
    };
    let numeric = |negated, compare| Kind::Numeric { negated, compare };
    let kind = match base {
        "StringEquals" => string(false, false, false),
        "StringNotEquals" => string(true, false, false),
        "StringEqualsIgnoreCase" => string(false, false, true),
        "StringNotEqualsIgnoreCase" => string(true, false, true),
        "StringLike" => string(false, true, false),
        "StringNotLike" => string(true, true, false),
        // AWS documents ArnEquals and ArnLike (and their negations) as the
        // same comparison, wildcards included.
        "ArnEquals" | "ArnLike" => Kind::Arn { negated: false },
        "ArnNotEquals" | "ArnNotLike" => Kind::Arn { negated: true },
        "NumericEquals" => numeric(false, Compare::Equals),
        "NumericNotEquals" => numeric(true, Compare::Equals),
        "NumericLessThan" => numeric(false, Compare::LessThan),
        "NumericLessThanEquals" => numeric(false, Compare::LessThanEquals),
        "NumericGreaterThan" => numeric(false, Compare::GreaterThan),
        "NumericGreaterThanEquals" => numeric(false, Compare::GreaterThanEquals),
        "Bool" => Kind::Bool,
        "Null" => Kind::Null,
        "DateEquals"
        | "DateNotEquals"
        | "DateLessThan"
        | "DateLessThanEquals"
        | "DateGreaterThan"
        | "DateGreaterThanEquals"
        | "IpAddress"
        | "NotIpAddress"
        | "BinaryEquals" => {
            return Err(PolicyError::Unsupported {
                at: at.to_string(),
                what: format!("condition operator {operator}"),
            });
        }
        _ => {
            return Err(PolicyError::UnknownOperator {
                at: at.to_string(),
                operator: operator.to_string(),
            });
        }
    };
    match kind {
        // AWS: IfExists goes on any operator but Null, which is itself the
        // test of existence.
        Kind::Null if if_exists || set.is_some() => Err(PolicyError::UnknownOperator {
            at: at.to_string(),
            operator: operator.to_string(),
        }),
        // Set operators are for multivalued keys, which hold strings or ARNs
        // (aws:TagKeys, aws:PrincipalOrgPaths); the numeric and boolean
        // forms are left out rather than given a guessed meaning.
        Kind::Numeric { .. } | Kind::Bool if set.is_some() => Err(PolicyError::Unsupported {
            at: at.to_string(),
            what: format!("condition operator {operator}"),
        }),
        _ => Ok((set, if_exists, kind)),
    }
}

impl Kind {
    fn test(self, values: &[String], variables: bool) -> Result<Test, &'static str> {
        Ok(match self {
            Kind::String {
                negated,
                like,
                ignore_case,
            } => Test::String {
                negated,
                like,
                ignore_case,
                values: values
                    .iter()
                    .map(|v| Template::parse(v, variables))
                    .collect::<Result<_, _>>()?,
            },
            Kind::Arn { negated } => Test::Arn {
                negated,
                values: values
                    .iter()
                    .map(|v| {
                        ArnPattern::parse(&Template::parse(v, variables)?)
                            .ok_or("an ARN condition value is an ARN of six colon-separated parts")
                    })
                    .collect::<Result<_, _>>()?,
            },
            Kind::Numeric { negated, compare } => Test::Numeric {
                negated,
                compare,
                values: values
                    .iter()
                    .map(|v| parse_number(v).ok_or("a numeric condition value is a number"))
                    .collect::<Result<_, _>>()?,
            },
            Kind::Bool => Test::Bool(
                values
                    .iter()
                    .map(|v| parse_bool(v).ok_or("a Bool condition value is true or false"))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Null => Test::Null(
                values
                    .iter()
                    .map(|v| parse_bool(v).ok_or("a Null condition value is true or false"))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl Condition {
    /// Whether the condition holds for the request, or `None` when a policy
    /// variable in its values cannot be resolved, which makes AWS treat the
    /// whole statement as invalid.
    pub(super) fn holds(&self, request: &Request, at: &str) -> Result<Option<bool>, PolicyError> {
        let present = request.lookup(&self.key);
        if let Test::Null(values) = &self.test {
            return Ok(Some(values.iter().any(|&null| null == present.is_none())));
        }
        let test = match Resolved::of(&self.test, request) {
            Some(test) => test,
            None => return Ok(None),
        };
        let negated = test.negated();
        let Some(present) = present else {
            // AWS: an absent key fails a condition, but passes a negated one
            // (StringNotEquals, ArnNotLike, ...); IfExists passes it;
            // ForAllValues passes an empty set, ForAnyValue fails it.
            return Ok(Some(match (self.if_exists, self.set) {
                (true, _) => true,
                (false, Some(SetOperator::AllValues)) => true,
                (false, Some(SetOperator::AnyValue)) => false,
                (false, None) => negated,
            }));
        };
        // A value of the request matches when it matches any value of the
        // policy (values are ORed); a negated operator passes a value that
        // matches none of them (NOR).
        let mut matched = Vec::with_capacity(present.len());
        for value in &present {
            matched.push(test.matches_any(value, &self.key, at)?);
        }
        Ok(Some(match self.set {
            None => matched.contains(&true) != negated,
            Some(SetOperator::AnyValue) => matched.iter().any(|&m| m != negated),
            Some(SetOperator::AllValues) => matched.iter().all(|&m| m != negated),
        }))
    }
}

/// A test with its policy variables replaced by the request's values.
enum Resolved<'t> {
    String {
        negated: bool,
        like: bool,
        ignore_case: bool,
        values: Vec<super::pattern::Resolved>,
    },
    Arn {
        negated: bool,
        values: Vec<ResolvedArn>,
    },
    Numeric {
        negated: bool,
        compare: Compare,
        values: &'t [f64],
    },
    Bool(&'t [bool]),
}

impl<'t> Resolved<'t> {
    fn of(test: &'t Test, request: &Request) -> Option<Self> {
        Some(match test {
            Test::String {
                negated,
                like,
                ignore_case,
                values,
            } => Resolved::String {
                negated: *negated,
                like: *like,
                ignore_case: *ignore_case,
                values: values
                    .iter()
                    .map(|v| v.resolve(request))
                    .collect::<Option<_>>()?,
            },
            Test::Arn { negated, values } => Resolved::Arn {
                negated: *negated,
                values: values
                    .iter()
                    .map(|v| v.resolve(request))
                    .collect::<Option<_>>()?,
            },
            Test::Numeric {
                negated,
                compare,
                values,
            } => Resolved::Numeric {
                negated: *negated,
                compare: *compare,
                values,
            },
            Test::Bool(values) => Resolved::Bool(values),
            // Null is decided before resolving.
            Test::Null(_) => Resolved::Bool(&[]),
        })
    }

    fn negated(&self) -> bool {
        match self {
            Resolved::String { negated, .. }
            | Resolved::Arn { negated, .. }
            | Resolved::Numeric { negated, .. } => *negated,
            Resolved::Bool(_) => false,
        }
    }

    /// Whether the request's `value` matches any of the policy's values,
    /// before negation.
    fn matches_any(&self, value: &str, key: &str, at: &str) -> Result<bool, PolicyError> {
        let not_of_type = |kind: &str| PolicyError::InvalidRequest {
            reason: format!("{at}: the request's {key} {value:?} is not {kind}"),
        };
        Ok(match self {
            Resolved::String {
                like,
                ignore_case,
                values,
                ..
            } => values.iter().any(|v| {
                if *like {
                    v.matches(value, false)
                } else if *ignore_case {
                    v.text().to_lowercase() == value.to_lowercase()
                } else {
                    v.text() == value
                }
            }),
            Resolved::Arn { values, .. } => values.iter().any(|v| v.matches(value)),
            Resolved::Numeric {
                compare, values, ..
            } => {
                let number = parse_number(value).ok_or_else(|| not_of_type("a number"))?;
                values.iter().any(|&v| match compare {
                    Compare::Equals => number == v,
                    Compare::LessThan => number < v,
                    Compare::LessThanEquals => number <= v,
                    Compare::GreaterThan => number > v,
                    Compare::GreaterThanEquals => number >= v,
                })
            }
            Resolved::Bool(values) => {
                let b = parse_bool(value).ok_or_else(|| not_of_type("true or false"))?;
                values.contains(&b)
            }
        })
    }
}

/// The values of one key: a string, number or boolean, or a non-empty list
/// of them.
fn condition_values(value: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        Value::Array(list) if !list.is_empty() => list.iter().map(one).collect(),
        Value::Array(_) => None,
        v => one(v).map(|s| vec![s]),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}
