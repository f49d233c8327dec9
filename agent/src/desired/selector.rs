//! Calico's label selector language, as BGPPeer `nodeSelector`/`peerSelector` use it
//! (`libcalico-go/lib/selector/parser/parser.go`): `all()`, `global()`, `has(k)`, `k == "v"`,
//! `k != "v"`, `k in {"a", "b"}`, `k not in {…}`, `k contains "s"`, `k starts with "s"`,
//! `k ends with "s"`, `!`, `&&`, `||` and parentheses; strings in single or double quotes.
//! confd matches them against the nodes' labels (`confd/pkg/backends/calico/node_labels.go`).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
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
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {message} at offset {offset}")]
pub struct SelectorError {
    pub selector: String,
    pub message: String,
    pub offset: usize,
}

impl Selector {
    /// Parses a selector; an empty one selects everything (as Calico's parser does).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser { s, pos: 0 };
        p.skip_ws();
        if p.pos == s.len() {
            return Ok(Self::All);
        }
        let sel = p.or()?;
        p.skip_ws();
        if p.pos != s.len() {
            return Err(p.err("unexpected text"));
        }
        Ok(sel)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k).map(String::as_str);
        match self {
            Self::All => true,
            Self::Has(k) => labels.contains_key(k),
            Self::Eq(k, v) => get(k) == Some(v.as_str()),
            // Calico: `k != "v"` also matches when the label is absent.
            Self::Ne(k, v) => get(k) != Some(v.as_str()),
            Self::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Self::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Self::Contains(k, v) => get(k).is_some_and(|x| x.contains(v.as_str())),
            Self::StartsWith(k, v) => get(k).is_some_and(|x| x.starts_with(v.as_str())),
            Self::EndsWith(k, v) => get(k).is_some_and(|x| x.ends_with(v.as_str())),
            Self::Not(a) => !a.matches(labels),
            Self::And(a, b) => a.matches(labels) && b.matches(labels),
            Self::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> SelectorError {
        SelectorError {
            selector: self.s.to_string(),
            message: message.into(),
            offset: self.pos,
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    /// Consumes `tok` (after whitespace) when it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes a keyword only when a non-identifier character follows it.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let r = self.rest();
        let boundary = r[word.len().min(r.len())..]
            .chars()
            .next()
            .is_none_or(|c| !is_label_char(c));
        if r.starts_with(word) && boundary {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(self.err("expected )"));
            }
            return Ok(inner);
        }
        if self.eat("all()") || self.eat("global()") {
            return Ok(Selector::All);
        }
        if self.eat_word("has") {
            if !self.eat("(") {
                return Err(self.err("expected ( after has"));
            }
            let k = self.label()?;
            if !self.eat(")") {
                return Err(self.err("expected )"));
            }
            return Ok(Selector::Has(k));
        }
        let k = self.label()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(k, self.string()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.err("expected in after not"));
            }
            return Ok(Selector::NotIn(k, self.set()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(k, self.string()?));
        }
        if self.eat_word("starts") && self.eat_word("with") {
            return Ok(Selector::StartsWith(k, self.string()?));
        }
        if self.eat_word("ends") && self.eat_word("with") {
            return Ok(Selector::EndsWith(k, self.string()?));
        }
        Err(self.err("expected an operator (==, !=, in, not in, contains, starts with, ends with)"))
    }

    fn label(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_label_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.err("expected a label key"));
        }
        let k = self.rest()[..len].to_string();
        self.pos += len;
        Ok(k)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let Some(q) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
        else {
            return Err(self.err("expected a quoted string"));
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(q) else {
            return Err(self.err("unterminated string"));
        };
        let v = body[..end].to_string();
        self.pos += end + 2;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.err("expected {"));
        }
        let mut out = Vec::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.push(self.string()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.err("expected , or }"));
            }
        }
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn m(sel: &str, kv: &[(&str, &str)]) -> bool {
        Selector::parse(sel)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(kv))
    }

    #[test]
    fn matches_like_calico() {
        let rack = [("rack", "r1"), ("kubernetes.io/hostname", "node-a")];
        assert!(m("all()", &[]));
        assert!(m("", &[]));
        assert!(m("rack == 'r1'", &rack));
        assert!(!m("rack == \"r2\"", &rack));
        assert!(m("rack != 'r2'", &rack));
        assert!(m("zone != 'z'", &rack), "absent label is != anything");
        assert!(m("has(rack) && !has(route-reflector)", &rack));
        assert!(m("rack in {'r0', 'r1'}", &rack));
        assert!(!m("rack not in {'r0','r1'}", &rack));
        assert!(m("kubernetes.io/hostname starts with 'node-'", &rack));
        assert!(m("rack ends with '1' || rack == 'x'", &rack));
        assert!(m("!(rack == 'r2') && rack contains 'r'", &rack));
        assert!(!m("has(route-reflector)", &rack));
    }

    #[test]
    fn bad_selectors_name_where() {
        for bad in [
            "rack ==",
            "rack = 'x'",
            "has(rack",
            "rack in {'a'",
            "(all()",
            "a == 'b' c",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
