//! The strings of a policy that are more than literal text: `*` and `?`
//! wildcards, policy variables (`${aws:username}`, `${key, 'default'}`) and
//! the escapes `${*}`, `${?}`, `${$}`, and ARNs compared segment by segment.

use super::Request;

/// One piece of a policy string as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A character of the policy; `*` and `?` are wildcards where the
    /// comparison takes wildcards and plain characters elsewhere.
    Char(char),
    /// `${*}`, `${?}` or `${$}`: a character that stays literal even where
    /// `*` and `?` are wildcards.
    Escaped(char),
    /// `${key}`, or `${key, 'default'}`, replaced by the request's value.
    Variable {
        key: String,
        default: Option<String>,
    },
}

/// A policy string, parsed once and resolved against each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyRun,
    AnyOne,
}

/// A template with its variables replaced by the request's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    tokens: Vec<Token>,
}

impl Template {
    /// Parses `text`. Policy variables exist only in policies of version
    /// 2012-10-17 (`variables`); in older ones `${...}` is literal text.
    /// The error is the reason the text is malformed.
    pub(super) fn parse(text: &str, variables: bool) -> Result<Self, &'static str> {
        let mut pieces = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if variables && c == '$' && chars.peek() == Some(&'{') {
                chars.next();
                pieces.push(parse_variable(&mut chars)?);
            } else {
                pieces.push(Piece::Char(c));
            }
        }
        Ok(Self { pieces })
    }

    /// Whether the template is the lone wildcard `*`, which in a Resource
    /// element stands for every resource, ARN or not.
    pub(super) fn is_lone_wildcard(&self) -> bool {
        self.pieces == [Piece::Char('*')]
    }

    /// The template with its variables replaced, or `None` when a variable
    /// has no single value in the request and no default: AWS then treats
    /// the statement as invalid rather than matching the variable against
    /// anything.
    pub(super) fn resolve(&self, request: &Request) -> Option<Resolved> {
        let mut tokens = Vec::with_capacity(self.pieces.len());
        for piece in &self.pieces {
            match piece {
                Piece::Char('*') => tokens.push(Token::AnyRun),
                Piece::Char('?') => tokens.push(Token::AnyOne),
                Piece::Char(c) | Piece::Escaped(c) => tokens.push(Token::Literal(*c)),
                Piece::Variable { key, default } => {
                    let value = match request.lookup(key).as_deref() {
                        Some([single]) => *single,
                        _ => default.as_deref()?,
                    };
                    tokens.extend(value.chars().map(Token::Literal));
                }
            }
        }
        Some(Resolved { tokens })
    }

    /// The template as resolved when it has no variables (actions, which
    /// take none). A variable, which `parse` without variables never
    /// produces, would stay as its literal text.
    pub(super) fn fixed(&self) -> Resolved {
        let mut tokens = Vec::with_capacity(self.pieces.len());
        for piece in &self.pieces {
            match piece {
                Piece::Char('*') => tokens.push(Token::AnyRun),
                Piece::Char('?') => tokens.push(Token::AnyOne),
                Piece::Char(c) | Piece::Escaped(c) => tokens.push(Token::Literal(*c)),
                Piece::Variable { key, .. } => {
                    tokens.extend(format!("${{{key}}}").chars().map(Token::Literal));
                }
            }
        }
        Resolved { tokens }
    }

    /// The six colon-separated segments of an ARN pattern, the last one
    /// keeping any further colons; `None` when there are fewer than six.
    /// Split before variables are replaced, so that the colon of a key such
    /// as `aws:username` or of a value never moves a segment boundary.
    fn arn_segments(&self) -> Option<Vec<Template>> {
        let mut segments = vec![Vec::new()];
        for piece in &self.pieces {
            if *piece == Piece::Char(':') && segments.len() < 6 {
                segments.push(Vec::new());
            } else if let Some(last) = segments.last_mut() {
                last.push(piece.clone());
            }
        }
        (segments.len() == 6).then(|| {
            segments
                .into_iter()
                .map(|pieces| Template { pieces })
                .collect()
        })
    }
}

impl Resolved {
    /// Wildcard matching of the whole of `text`: `*` any run of characters
    /// (none too), `?` exactly one.
    pub(super) fn matches(&self, text: &str, ignore_case: bool) -> bool {
        let text: Vec<char> = text.chars().collect();
        let same = |p: char, t: char| {
            if ignore_case {
                p.to_lowercase().eq(t.to_lowercase())
            } else {
                p == t
            }
        };
        let (mut p, mut t) = (0, 0);
        // The last `*` seen and the text position it is tried from: on a
        // mismatch it takes one more character, which is enough backtracking
        // for `*`/`?` patterns.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(Token::AnyOne) => {
                    p += 1;
                    t += 1;
                }
                Some(Token::Literal(c)) if same(*c, text[t]) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }

    /// The resolved text with `*` and `?` as plain characters, for the
    /// comparisons that take no wildcards (StringEquals and the like).
    pub(super) fn text(&self) -> String {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => *c,
                Token::AnyRun => '*',
                Token::AnyOne => '?',
            })
            .collect()
    }
}

/// An ARN with wildcards, as in a Resource element or an Arn condition:
/// each of the six segments is matched on its own, so a `*` in the region
/// never reaches into the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArnPattern {
    segments: Vec<Template>,
}

impl ArnPattern {
    pub(super) fn parse(template: &Template) -> Option<Self> {
        template.arn_segments().map(|segments| Self { segments })
    }

    /// The pattern with its variables replaced, or `None` when one cannot
    /// be resolved (see [`Template::resolve`]).
    pub(super) fn resolve(&self, request: &Request) -> Option<ResolvedArn> {
        let segments = self
            .segments
            .iter()
            .map(|s| s.resolve(request))
            .collect::<Option<_>>()?;
        Some(ResolvedArn { segments })
    }
}

/// An ARN pattern with its variables replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvedArn {
    segments: Vec<Resolved>,
}

impl ResolvedArn {
    /// Whether `arn` matches segment by segment; a value that is not an ARN
    /// of six segments matches nothing.
    pub(super) fn matches(&self, arn: &str) -> bool {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        parts.len() == 6
            && self
                .segments
                .iter()
                .zip(&parts)
                .all(|(segment, part)| segment.matches(part, false))
    }
}

/// What follows `${` up to the closing `}`.
fn parse_variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<Piece, &'static str> {
    let mut key = String::new();
    let mut has_default = false;
    loop {
        match chars.next() {
            None => return Err("a policy variable `${` is not closed by `}`"),
            Some('}') => break,
            Some(',') => {
                has_default = true;
                break;
            }
            Some(c) => key.push(c),
        }
    }
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err("a policy variable `${}` names no key");
    }
    if !has_default {
        return Ok(match key.as_str() {
            "*" => Piece::Escaped('*'),
            "?" => Piece::Escaped('?'),
            "$" => Piece::Escaped('$'),
            _ => Piece::Variable { key, default: None },
        });
    }
    skip_spaces(chars);
    if chars.next() != Some('\'') {
        return Err("the default of a policy variable is not quoted with '");
    }
    let mut default = String::new();
    loop {
        match chars.next() {
            None => return Err("the default of a policy variable is not closed by '"),
            // A doubled quote is a quote of the default; a single one ends it.
            Some('\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                default.push('\'');
            }
            Some('\'') => break,
            Some(c) => default.push(c),
        }
    }
    skip_spaces(chars);
    if chars.next() != Some('}') {
        return Err("a policy variable with a default is not closed by `}`");
    }
    Ok(Piece::Variable {
        key,
        default: Some(default),
    })
}

fn skip_spaces(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}
