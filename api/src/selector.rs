//! The label selector language used by every Twill resource that selects
//! something (pool `nodeSelector`, peer `nodeSelector`/`peerSelector`, policy
//! `selector`/`namespaceSelector`). It is Calico's syntax, so users can carry
//! their selectors over:
//!
//! ```text
//! all()                      every object
//! rack == 'a'   rack != 'a'  equality
//! has(rack)     !has(rack)   presence
//! rack in {'a', 'b'}         set membership (also `not in`)
//! name starts with 'web'     also `ends with`, `contains`
//! a == 'x' && (b == 'y' || !has(c))
//! ```
//!
//! An empty string means `all()`. Parsing is pure and total: bad input gives a
//! [`SelectorError`] with the byte offset, never a panic. [`Selector`]'s
//! `Display` prints a canonical form, so two spellings of the same selector
//! compare equal as strings (the policy renderer keys shared sets on it).

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

/// Why a selector string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {input:?}: {reason} at offset {offset}")]
pub struct SelectorError {
    pub input: String,
    pub offset: usize,
    pub reason: String,
}

impl Selector {
    /// Parses Calico selector syntax. An empty (or all-whitespace) string is `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { src: input, pos: 0 };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let sel = p.parse_or(0)?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("unexpected trailing input"));
        }
        Ok(sel)
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            // Calico semantics: `k != 'v'` is true when the label is absent.
            Selector::Ne(k, v) => labels.get(k) != Some(v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Selector::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Selector::Contains(k, v) => labels.get(k).is_some_and(|l| l.contains(v.as_str())),
            Selector::StartsWith(k, v) => labels.get(k).is_some_and(|l| l.starts_with(v.as_str())),
            Selector::EndsWith(k, v) => labels.get(k).is_some_and(|l| l.ends_with(v.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(ss) => ss.iter().all(|s| s.matches(labels)),
            Selector::Or(ss) => ss.iter().any(|s| s.matches(labels)),
        }
    }

    /// Whether the selector is `all()`.
    pub fn is_all(&self) -> bool {
        matches!(self, Selector::All)
    }

    /// Builds the selector equivalent to a Kubernetes `LabelSelector`
    /// (`matchLabels` AND every `matchExpressions` term). An empty label
    /// selector selects everything, as in Kubernetes.
    pub fn from_label_selector(
        match_labels: &BTreeMap<String, String>,
        expressions: &[(String, String, Vec<String>)],
    ) -> Result<Selector, SelectorError> {
        let mut terms: Vec<Selector> = match_labels
            .iter()
            .map(|(k, v)| Selector::Eq(k.clone(), v.clone()))
            .collect();
        for (key, op, values) in expressions {
            let bad = |reason: &str| SelectorError {
                input: format!("{key} {op} {values:?}"),
                offset: 0,
                reason: reason.to_string(),
            };
            terms.push(match op.as_str() {
                "In" if values.is_empty() => return Err(bad("operator In needs values")),
                "NotIn" if values.is_empty() => return Err(bad("operator NotIn needs values")),
                "In" => Selector::In(key.clone(), values.clone()),
                "NotIn" => Selector::NotIn(key.clone(), values.clone()),
                "Exists" if values.is_empty() => Selector::Has(key.clone()),
                "DoesNotExist" if values.is_empty() => {
                    Selector::Not(Box::new(Selector::Has(key.clone())))
                }
                "Exists" | "DoesNotExist" => return Err(bad("operator takes no values")),
                _ => return Err(bad("unknown operator (In, NotIn, Exists, DoesNotExist)")),
            });
        }
        Ok(match terms.len() {
            0 => Selector::All,
            1 => terms.remove(0),
            _ => Selector::And(terms),
        })
    }
}

impl Selector {
    /// Parses kubectl's label-selector syntax (`get -l`): comma-separated
    /// requirements, all of which must hold: `k=v`, `k==v`, `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist).
    /// As in Kubernetes, `!=` and `notin` also match objects without the key.
    pub fn parse_kubectl(input: &str) -> Result<Selector, SelectorError> {
        let err = |offset: usize, reason: String| SelectorError {
            input: input.to_string(),
            offset,
            reason,
        };
        // Split on commas outside parentheses, remembering offsets.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in input.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push((start, &input[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
            if depth < 0 {
                return Err(err(i, "')' without '('".into()));
            }
        }
        if depth != 0 {
            return Err(err(input.len(), "'(' is not closed".into()));
        }
        parts.push((start, &input[start..]));
        let check_key = |at: usize, k: &str| -> Result<String, SelectorError> {
            crate::validate::check_label_key(k)
                .map(|_| k.to_string())
                .map_err(|r| err(at, format!("label key {k:?}: {r}")))
        };
        let check_value = |at: usize, v: &str| -> Result<String, SelectorError> {
            crate::validate::check_label_value(v)
                .map(|_| v.to_string())
                .map_err(|r| err(at, format!("label value {v:?}: {r}")))
        };
        let mut terms = Vec::new();
        for (at, raw) in parts {
            let t = raw.trim();
            let at = at + (raw.len() - raw.trim_start().len());
            if t.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err(at, "empty requirement (two commas?)".into()));
            }
            if let Some(k) = t.strip_prefix('!') {
                terms.push(Selector::Not(Box::new(Selector::Has(check_key(
                    at + 1,
                    k.trim(),
                )?))));
                continue;
            }
            let set_op = t.find('(').and_then(|open| {
                let head = t[..open].trim_end();
                let (key, op) = head.rsplit_once(char::is_whitespace)?;
                Some((key.trim(), op, open))
            });
            if let Some((key, op, open)) = set_op
                && (op == "in" || op == "notin")
            {
                let Some(body) = t[open + 1..].strip_suffix(')') else {
                    return Err(err(at + open, "expected (VALUE, ...) closed by ')'".into()));
                };
                let key = check_key(at, key)?;
                let values = body
                    .split(',')
                    .map(|v| check_value(at + open, v.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                terms.push(if op == "in" {
                    Selector::In(key, values)
                } else {
                    Selector::NotIn(key, values)
                });
                continue;
            }
            if let Some((k, v)) = t.split_once("!=") {
                terms.push(Selector::Ne(
                    check_key(at, k.trim())?,
                    check_value(at, v.trim())?,
                ));
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                terms.push(Selector::Eq(
                    check_key(at, k.trim())?,
                    check_value(at, v.trim())?,
                ));
            } else {
                terms.push(Selector::Has(check_key(at, t)?));
            }
        }
        Ok(match terms.len() {
            0 => Selector::All,
            1 => terms.remove(0),
            _ => Selector::And(terms),
        })
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

fn quote(v: &str) -> String {
    if v.contains('\'') {
        format!("\"{v}\"")
    } else {
        format!("'{v}'")
    }
}

fn set(vs: &[String]) -> String {
    let items: Vec<String> = vs.iter().map(|v| quote(v)).collect();
    format!("{{{}}}", items.join(", "))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {}", set(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {}", set(vs)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => match **s {
                Selector::And(_) | Selector::Or(_) => write!(f, "!({s})"),
                _ => write!(f, "!{s}"),
            },
            Selector::And(ss) => {
                let parts: Vec<String> = ss
                    .iter()
                    .map(|s| match s {
                        Selector::Or(_) => format!("({s})"),
                        _ => s.to_string(),
                    })
                    .collect();
                write!(f, "{}", parts.join(" && "))
            }
            Selector::Or(ss) => {
                let parts: Vec<String> = ss.iter().map(|s| s.to_string()).collect();
                write!(f, "{}", parts.join(" || "))
            }
        }
    }
}

/// Recursion limit: a selector nested deeper than this is rejected rather
/// than risking the stack on hostile input.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> SelectorError {
        SelectorError {
            input: self.src.to_string(),
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    /// Consumes `tok` (after whitespace) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes a keyword only when it is not the prefix of a longer word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        if let Some(after) = self.rest().strip_prefix(word)
            && after.chars().next().is_none_or(|c| !is_key_char(c))
        {
            self.pos += word.len();
            return true;
        }
        false
    }

    fn expect(&mut self, tok: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{tok}`")))
        }
    }

    fn parse_or(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error("selector nested too deeply"));
        }
        let mut terms = vec![self.parse_and(depth)?];
        while self.eat("||") {
            terms.push(self.parse_and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Selector::Or(terms)
        })
    }

    fn parse_and(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        let mut terms = vec![self.parse_unary(depth)?];
        while self.eat("&&") {
            terms.push(self.parse_unary(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Selector::And(terms)
        })
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error("selector nested too deeply"));
        }
        self.skip_ws();
        if self.rest().starts_with("!=") {
            return Err(self.error("`!=` needs a label name before it"));
        }
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.parse_unary(depth + 1)?)));
        }
        if self.eat("(") {
            let inner = self.parse_or(depth + 1)?;
            self.expect(")")?;
            return Ok(inner);
        }
        if self.eat_word("all") {
            self.expect("(")?;
            self.expect(")")?;
            return Ok(Selector::All);
        }
        if self.eat_word("has") {
            self.expect("(")?;
            let key = self.parse_key()?;
            self.expect(")")?;
            return Ok(Selector::Has(key));
        }
        let key = self.parse_key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.parse_string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.parse_string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.parse_set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected `in` after `not`"));
            }
            return Ok(Selector::NotIn(key, self.parse_set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.parse_string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `starts`"));
            }
            return Ok(Selector::StartsWith(key, self.parse_string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `ends`"));
            }
            return Ok(Selector::EndsWith(key, self.parse_string()?));
        }
        Err(self.error(&format!(
            "expected an operator (==, !=, in, not in, contains, starts with, ends with) after `{key}`"
        )))
    }

    fn parse_key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_key_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.error("expected a label name"));
        }
        let key = self.rest()[..len].to_string();
        self.pos += len;
        Ok(key)
    }

    fn parse_string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("expected a quoted value")),
        };
        self.pos += 1;
        match self.rest().find(quote) {
            Some(end) => {
                let v = self.rest()[..end].to_string();
                self.pos += end + 1;
                Ok(v)
            }
            None => Err(self.error("unterminated string")),
        }
    }

    fn parse_set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{")?;
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.parse_string()?);
            if self.eat("}") {
                return Ok(values);
            }
            self.expect(",")?;
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates_every_operator() {
        let l = labels(&[("rack", "a"), ("role", "web-frontend")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("rack == 'a'", true),
            ("rack == 'b'", false),
            ("rack != 'b'", true),
            ("zone != 'x'", true),
            ("has(rack)", true),
            ("!has(rack)", false),
            ("rack in {'a', 'b'}", true),
            ("rack in {}", false),
            ("rack not in {'a'}", false),
            ("zone not in {'a'}", true),
            ("role contains 'front'", true),
            ("role starts with 'web'", true),
            ("role ends with 'web'", false),
            ("rack == 'a' && role == 'x'", false),
            ("rack == 'x' || role starts with \"web\"", true),
            ("!(rack == 'a' && has(role))", false),
            ("example.com/team-name == 'a' || has(rack)", true),
        ];
        for (src, want) in cases {
            let sel = Selector::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(sel.matches(&l), want, "{src}");
        }
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for src in [
            "a=='1'&&(b=='2'||!has(c))",
            "x in {'1','2'}",
            "!(a == 'b' || c == 'd')",
            "k not in {'a'} && v ends with 'z'",
        ] {
            let sel = Selector::parse(src).unwrap();
            let printed = sel.to_string();
            assert_eq!(
                Selector::parse(&printed).unwrap(),
                sel,
                "{src} -> {printed}"
            );
        }
        assert_eq!(
            Selector::parse("a=='1'&&b=='2'").unwrap().to_string(),
            Selector::parse("a == '1'  &&  b == \"2\"")
                .unwrap()
                .to_string()
        );
    }

    #[test]
    fn rejects_bad_input_with_position() {
        for (src, offset) in [
            ("rack ==", 7),
            ("rack = 'a'", 5),
            ("has(rack", 8),
            ("rack == 'a' &&", 14),
            ("rack == 'a')", 11),
            ("rack in {'a' 'b'}", 13),
            ("== 'a'", 0),
        ] {
            let err = Selector::parse(src).unwrap_err();
            assert_eq!(err.offset, offset, "{src}: {err}");
        }
        let deep = "!".repeat(1000) + "all()";
        assert!(Selector::parse(&deep).is_err());
        let deep_parens = "(".repeat(1000);
        assert!(Selector::parse(&deep_parens).is_err());
    }

    #[test]
    fn label_selector_semantics_match_kubernetes() {
        let ml = labels(&[("app", "db")]);
        let sel = Selector::from_label_selector(
            &ml,
            &[(
                "tier".into(),
                "NotIn".into(),
                vec!["cache".into(), "edge".into()],
            )],
        )
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "db")])));
        assert!(!sel.matches(&labels(&[("app", "db"), ("tier", "edge")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(
            Selector::from_label_selector(&BTreeMap::new(), &[])
                .unwrap()
                .is_all()
        );
        assert!(
            Selector::from_label_selector(&BTreeMap::new(), &[("a".into(), "In".into(), vec![])])
                .is_err()
        );
    }

    #[test]
    fn kubectl_label_selectors() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let yes = |s: &str| Selector::parse_kubectl(s).unwrap().matches(&labels);
        assert!(yes("app=web"));
        assert!(yes("app==web,tier"));
        assert!(!yes("app!=web"));
        assert!(yes("env!=prod"));
        assert!(yes("app in (web, db)"));
        assert!(!yes("app notin (web,db)"));
        assert!(yes("env notin (prod)"));
        assert!(yes("!env"));
        assert!(!yes("!app"));
        assert!(!yes("app=web,tier=back"));
        assert!(yes(""));
        for bad in [
            "bad key=x",
            "app=(",
            "app in (a",
            "app in a)",
            ",",
            "a=b,,c",
            "k=v w",
        ] {
            assert!(Selector::parse_kubectl(bad).is_err(), "{bad}");
        }
    }
}
