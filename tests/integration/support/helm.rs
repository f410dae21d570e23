//! A renderer for the subset of Helm's Go templates that `charts/tenantry`
//! uses, because no `helm` binary exists where these tests run.
//!
//! Supported, with Go template semantics: text with `{{- ... -}}` whitespace
//! trimming, `{{/* comments */}}`, `define`/`include`, `if`/`else if`/`else`,
//! `range` (lists and maps) and `with` (each with `else`), pipelines with
//! `|`, parenthesised sub-pipelines, `.` / `$` field chains, string and
//! number literals, `.Files.Get`, and the functions `include`, `toYaml`,
//! `nindent`, `indent`, `quote`, `default`, `required`, `join`, `eq`, `ne`,
//! `not`, `and`, `or`. Anything else is an error, never silently empty: a
//! template that uses more than this must grow this renderer (or be checked
//! with `helm template` where helm exists).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(Pipeline),
    If(Vec<(Pipeline, Vec<Node>)>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
}

type Pipeline = Vec<Command>;
type Command = Vec<Term>;

#[derive(Debug, Clone)]
enum Term {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
    /// `.A.B` (empty: `.`), relative to dot.
    Dot(Vec<String>),
    /// `$.A.B` (empty: `$`), relative to the root.
    Root(Vec<String>),
    Func(String),
    Sub(Pipeline),
}

enum Tok {
    Text(String),
    Action(String),
}

/// Splits the template into text and actions, applying `{{-` and `-}}`.
fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let trim_left = after.starts_with("- ");
        if trim_left {
            text = text.trim_end().to_string();
        }
        toks.push(Tok::Text(text));
        let inner_start = if trim_left { 2 } else { 0 };
        let end = find_action_end(&after[inner_start..])
            .ok_or_else(|| "unclosed action".to_string())?
            + inner_start;
        let mut inner = &after[inner_start..end];
        trim_next = inner.ends_with(" -");
        if trim_next {
            inner = &inner[..inner.len() - 2];
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            toks.push(Tok::Action(inner.to_string()));
        }
        rest = &after[end + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    toks.push(Tok::Text(text));
    Ok(toks)
}

/// The position of the `}}` that ends an action, skipping string literals.
fn find_action_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'}' if !in_str && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

struct Parser {
    toks: std::vec::IntoIter<Tok>,
    defines: BTreeMap<String, Vec<Node>>,
}

/// How a list of nodes ended.
enum Closing {
    Eof,
    End,
    Else(Option<Pipeline>),
}

impl Parser {
    fn nodes(&mut self) -> Result<(Vec<Node>, Closing), String> {
        let mut nodes = Vec::new();
        while let Some(tok) = self.toks.next() {
            let action = match tok {
                Tok::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Tok::Action(a) => a,
            };
            let (word, rest) = match action.split_once(char::is_whitespace) {
                Some((w, r)) => (w, r.trim()),
                None => (action.as_str(), ""),
            };
            match word {
                "end" => return Ok((nodes, Closing::End)),
                "else" if rest.is_empty() => return Ok((nodes, Closing::Else(None))),
                "else" => {
                    let cond = rest
                        .strip_prefix("if ")
                        .ok_or_else(|| format!("unsupported `else {rest}`"))?;
                    return Ok((nodes, Closing::Else(Some(parse_pipeline(cond)?))));
                }
                "if" => {
                    let mut branches = Vec::new();
                    let mut cond = parse_pipeline(rest)?;
                    loop {
                        let (body, end) = self.nodes()?;
                        branches.push((cond, body));
                        match end {
                            Closing::End => break nodes.push(Node::If(branches, Vec::new())),
                            Closing::Else(Some(next)) => cond = next,
                            Closing::Else(None) => {
                                let (other, end) = self.nodes()?;
                                expect_end(end)?;
                                break nodes.push(Node::If(branches, other));
                            }
                            Closing::Eof => return Err("`if` without `end`".into()),
                        }
                    }
                }
                "range" | "with" => {
                    let pipe = parse_pipeline(rest)?;
                    let (body, end) = self.nodes()?;
                    let other = match end {
                        Closing::End => Vec::new(),
                        Closing::Else(None) => {
                            let (other, end) = self.nodes()?;
                            expect_end(end)?;
                            other
                        }
                        _ => return Err(format!("`{word}` without `end`")),
                    };
                    nodes.push(if word == "range" {
                        Node::Range(pipe, body, other)
                    } else {
                        Node::With(pipe, body, other)
                    });
                }
                "define" => {
                    let name = match parse_pipeline(rest)?.as_slice() {
                        [cmd] => match cmd.as_slice() {
                            [Term::Str(name)] => name.clone(),
                            _ => return Err("define needs a name".into()),
                        },
                        _ => return Err("define needs a name".into()),
                    };
                    let (body, end) = self.nodes()?;
                    expect_end(end)?;
                    self.defines.insert(name, body);
                }
                "template" | "block" | "break" | "continue" => {
                    return Err(format!("`{word}` is not supported by this renderer"));
                }
                _ if action.starts_with('$') && action.contains(":=") => {
                    return Err("variables are not supported by this renderer".into());
                }
                _ => nodes.push(Node::Output(parse_pipeline(&action)?)),
            }
        }
        Ok((nodes, Closing::Eof))
    }
}

fn expect_end(end: Closing) -> Result<(), String> {
    match end {
        Closing::End => Ok(()),
        _ => Err("expected `end`".into()),
    }
}

fn parse_pipeline(src: &str) -> Result<Pipeline, String> {
    let mut chars = src.chars().peekable();
    let pipe = parse_pipe(&mut chars)?;
    if let Some(c) = chars.next() {
        return Err(format!("unexpected `{c}` in `{src}`"));
    }
    Ok(pipe)
}

fn parse_pipe(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<Pipeline, String> {
    let mut pipe = vec![Vec::new()];
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let term = match c {
            ')' => break,
            '|' => {
                chars.next();
                pipe.push(Vec::new());
                continue;
            }
            '(' => {
                chars.next();
                let sub = parse_pipe(chars)?;
                if chars.next() != Some(')') {
                    return Err("unclosed `(`".into());
                }
                Term::Sub(sub)
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next().ok_or("unclosed string")? {
                        '"' => break,
                        '\\' => match chars.next().ok_or("bad escape")? {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            other => s.push(other),
                        },
                        other => s.push(other),
                    }
                }
                Term::Str(s)
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '|' || c == ')' || c == '(' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                word_term(&word)?
            }
        };
        pipe.last_mut().expect("a command").push(term);
    }
    if pipe.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(pipe)
}

fn word_term(word: &str) -> Result<Term, String> {
    let fields = |s: &str| -> Vec<String> {
        s.split('.')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(match word {
        "true" => Term::Bool(true),
        "false" => Term::Bool(false),
        _ if word.starts_with('.') => Term::Dot(fields(word)),
        _ if word == "$" || word.starts_with("$.") => Term::Root(fields(&word[1..])),
        _ if word.starts_with('$') => return Err(format!("variable {word} is not supported")),
        _ if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
            Term::Num(word.parse().map_err(|_| format!("bad number {word}"))?)
        }
        _ => Term::Func(word.to_string()),
    })
}

/// A parsed chart: its templates and its named templates.
pub struct Chart {
    templates: BTreeMap<String, Vec<Node>>,
    defines: BTreeMap<String, Vec<Node>>,
    files: BTreeMap<String, String>,
    chart: Value,
    pub values: Value,
}

impl Chart {
    /// Loads `Chart.yaml`, `values.yaml`, `files/*` and `templates/*`.
    pub fn load(dir: &Path) -> Self {
        let read = |p: &Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        };
        let yaml = |p: &Path| -> Value {
            serde_yaml::from_str(&read(p)).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
        };
        let chart = yaml(&dir.join("Chart.yaml"));
        let values = yaml(&dir.join("values.yaml"));
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("files")).expect("files/") {
            let path = entry.expect("entry").path();
            let name = format!("files/{}", path.file_name().unwrap().to_string_lossy());
            files.insert(name, read(&path));
        }
        let mut templates = BTreeMap::new();
        let mut defines = BTreeMap::new();
        let mut names: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .expect("templates/")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let mut parser = Parser {
                toks: lex(&read(&path))
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                    .into_iter(),
                defines: BTreeMap::new(),
            };
            let (nodes, end) = parser.nodes().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(end, Closing::Eof),
                "{name}: unbalanced `end`/`else`"
            );
            defines.append(&mut parser.defines);
            // Helm renders files whose name starts with `_` only as partials.
            if !name.starts_with('_') && !name.ends_with(".txt") {
                templates.insert(name, nodes);
            }
        }
        Self {
            templates,
            defines,
            files,
            chart,
            values,
        }
    }

    /// Renders every template with the chart's values merged with
    /// `overrides` (as `helm template -f overrides.yaml`): file name -> text.
    pub fn render(
        &self,
        release: &str,
        namespace: &str,
        overrides: &Value,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut values = self.values.clone();
        merge(&mut values, overrides);
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let root = json!({
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {
                "Name": self.chart["name"],
                "Version": self.chart["version"],
                "AppVersion": self.chart["appVersion"],
            },
            "Files": files,
        });
        let mut out = BTreeMap::new();
        for (name, nodes) in &self.templates {
            let text = self
                .exec(nodes, &root, &root)
                .map_err(|e| format!("{name}: {e}"))?;
            out.insert(name.clone(), text);
        }
        Ok(out)
    }

    fn exec(&self, nodes: &[Node], dot: &Value, root: &Value) -> Result<String, String> {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => out.push_str(&print(&self.eval(p, dot, root)?)?),
                Node::If(branches, other) => {
                    let mut taken = false;
                    for (cond, body) in branches {
                        if truthy(&self.eval(cond, dot, root)?) {
                            out.push_str(&self.exec(body, dot, root)?);
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        out.push_str(&self.exec(other, dot, root)?);
                    }
                }
                Node::With(p, body, other) => {
                    let v = self.eval(p, dot, root)?;
                    if truthy(&v) {
                        out.push_str(&self.exec(body, &v, root)?);
                    } else {
                        out.push_str(&self.exec(other, dot, root)?);
                    }
                }
                Node::Range(p, body, other) => {
                    let items: Vec<Value> = match self.eval(p, dot, root)? {
                        Value::Array(a) => a,
                        Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
                        Value::Null => Vec::new(),
                        other => return Err(format!("cannot range over {other}")),
                    };
                    if items.is_empty() {
                        out.push_str(&self.exec(other, dot, root)?);
                    }
                    for item in &items {
                        out.push_str(&self.exec(body, item, root)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn eval(&self, pipe: &Pipeline, dot: &Value, root: &Value) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for cmd in pipe {
            prev = Some(self.command(cmd, prev, dot, root)?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    fn command(
        &self,
        cmd: &Command,
        prev: Option<Value>,
        dot: &Value,
        root: &Value,
    ) -> Result<Value, String> {
        let term = |t: &Term| -> Result<Value, String> {
            Ok(match t {
                Term::Str(s) => Value::String(s.clone()),
                Term::Num(n) => Value::Number(n.clone()),
                Term::Bool(b) => Value::Bool(*b),
                Term::Dot(f) => field(dot, f),
                Term::Root(f) => field(root, f),
                Term::Sub(p) => self.eval(p, dot, root)?,
                Term::Func(name) => return Err(format!("function {name} used as a value")),
            })
        };
        let (head, rest) = cmd.split_first().expect("non-empty command");
        // `.Files.Get "path"`: the one method call the chart uses.
        if let Term::Dot(f) | Term::Root(f) = head
            && f.len() == 2
            && f[0] == "Files"
            && f[1] == "Get"
        {
            let [Term::Str(path)] = rest else {
                return Err(".Files.Get needs one string".into());
            };
            return root["Files"]
                .get(path)
                .cloned()
                .ok_or_else(|| format!(".Files.Get: no file {path}"));
        }
        let Term::Func(name) = head else {
            if rest.is_empty() && prev.is_none() {
                return term(head);
            }
            return Err(format!("{head:?} is not a function"));
        };
        let mut args = rest.iter().map(term).collect::<Result<Vec<_>, _>>()?;
        args.extend(prev);
        let s = |v: &Value| -> String {
            match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        let arity = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{name} takes {n} arguments, got {}", args.len()))
            }
        };
        Ok(match name.as_str() {
            "include" => {
                arity(2)?;
                let body = self
                    .defines
                    .get(&s(&args[0]))
                    .ok_or_else(|| format!("no template {}", args[0]))?;
                // In a named template, `$` is the data it was given.
                Value::String(self.exec(body, &args[1], &args[1])?)
            }
            "toYaml" => {
                arity(1)?;
                let text = serde_yaml::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(text.trim_end_matches('\n').to_string())
            }
            "nindent" | "indent" => {
                arity(2)?;
                let n = args[0].as_u64().ok_or("indent needs a number")? as usize;
                let pad = " ".repeat(n);
                let body = s(&args[1])
                    .split('\n')
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Value::String(if name == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "quote" => Value::String(
                args.iter()
                    .map(|a| serde_json::to_string(&s(a)).expect("string"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            "default" => {
                arity(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "required" => {
                arity(2)?;
                if args[1].is_null() || args[1] == json!("") {
                    return Err(s(&args[0]));
                }
                args[1].clone()
            }
            "join" => {
                arity(2)?;
                let list = args[1].as_array().ok_or("join needs a list")?;
                Value::String(list.iter().map(s).collect::<Vec<_>>().join(&s(&args[0])))
            }
            "eq" | "ne" => {
                arity(2)?;
                Value::Bool((args[0] == args[1]) == (name == "eq"))
            }
            "not" => {
                arity(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "and" => args
                .iter()
                .find(|a| !truthy(a))
                .or(args.last())
                .cloned()
                .unwrap_or(Value::Null),
            "or" => args
                .iter()
                .find(|a| truthy(a))
                .or(args.last())
                .cloned()
                .unwrap_or(Value::Null),
            other => {
                return Err(format!(
                    "function {other} is not supported by this renderer"
                ));
            }
        })
    }
}

fn field(base: &Value, fields: &[String]) -> Value {
    fields.iter().fold(base.clone(), |v, f| {
        v.get(f).cloned().unwrap_or(Value::Null)
    })
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn print(v: &Value) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Bool(_) | Value::Number(_) => Ok(v.to_string()),
        other => Err(format!(
            "printing a map or list ({other}) directly: use toYaml"
        )),
    }
}

/// Deep-merges `overrides` into `base`, as Helm merges values files.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Splits rendered templates into YAML documents, as Helm does, dropping
/// empty ones; each is parsed.
pub fn documents(rendered: &BTreeMap<String, String>) -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for (name, text) in rendered {
        let mut chunk = String::new();
        let mut flush = |chunk: &mut String| {
            if !chunk.trim().is_empty() {
                let v: Value = serde_yaml::from_str(chunk)
                    .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}\n{chunk}"));
                if !v.is_null() {
                    docs.push((name.clone(), v));
                }
            }
            chunk.clear();
        };
        for line in text.lines() {
            if line.trim_end() == "---" {
                flush(&mut chunk);
            } else {
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
        flush(&mut chunk);
    }
    docs
}
