//! The block-style YAML that `kubectl get -o yaml` and `calicoctl get -o yaml` print, read
//! straight into serde, several times faster than a general YAML parser: at 5,000 nodes the
//! IPAM blocks are 22 MiB of it, and serde-saphyr needs over a second for them.
//!
//! The subset is what those printers emit: block mappings and sequences (a sequence may sit at
//! its key's indentation), plain scalars, single- and double-quoted scalars on one line, `[]`
//! and `{}`, full-line comments and `---` between documents. Anything else (flow collections,
//! anchors and aliases, tags, block and multi-line scalars, comments after a value, tabs,
//! numbers that are not plain decimals, deep nesting) is [`Error::Unsupported`], and the
//! caller reads the file with the general parser instead: which path read a file changes only
//! how fast it was read. A plain scalar is typed by YAML 1.2's core schema with booleans
//! limited to `true`/`false`, as the general parser is configured.

use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// Nesting deeper than this is left to the general parser, which has its own limits.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line}: {what} is outside the block YAML subset")]
    Unsupported { line: usize, what: &'static str },
    #[error("{0}")]
    Custom(String),
}

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

/// Hands a deserializer for each document of `text` to `each`, in order.
pub fn read_documents<'de>(
    text: &'de str,
    mut each: impl FnMut(Value<'_, 'de>) -> Result<(), Error>,
) -> Result<(), Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        text,
        pos: 0,
        line_start: 0,
        end: line_end(text, 0),
        line: 1,
        depth: 0,
    };
    if memchr::memchr(b'\r', text.as_bytes()).is_some() {
        return Err(p.unsupported("a carriage return"));
    }
    if p.peek()?.is_none() && p.pos >= p.text.len() {
        return Ok(());
    }
    loop {
        p.peek()?;
        if p.at_document_marker() {
            p.document_marker()?;
        }
        // An empty document is none, as the general parser counts them.
        if p.peek()?.is_some() {
            each(Value::new(&mut p, -1, false))?;
        }
        if p.peek()?.is_some() {
            return Err(p.unsupported("content after the document"));
        }
        if p.pos >= p.text.len() {
            return Ok(());
        }
    }
}

/// Where reading is: `pos` is either inside a line, at content still to be read, or at the
/// end of what was read of it.
struct Parser<'de> {
    text: &'de str,
    pos: usize,
    line_start: usize,
    /// The end of the current line (its `\n`, or the end of the text).
    end: usize,
    /// 1-based, for messages.
    line: usize,
    depth: usize,
}

impl<'de> Parser<'de> {
    fn unsupported(&self, what: &'static str) -> Error {
        Error::Unsupported {
            line: self.line,
            what,
        }
    }

    fn col(&self) -> usize {
        self.pos - self.line_start
    }

    fn line_end(&self) -> usize {
        self.end
    }

    /// The rest of the current line from `pos`.
    fn rest(&self) -> &'de str {
        &self.text[self.pos..self.end]
    }

    fn next_line(&mut self) {
        self.pos = (self.end + 1).min(self.text.len());
        self.line_start = self.pos;
        self.end = line_end(self.text, self.pos);
        self.line += 1;
    }

    fn at_document_marker(&self) -> bool {
        self.pos == self.line_start && {
            let r = self.rest();
            r.starts_with("---") || r.starts_with("...")
        }
    }

    fn document_marker(&mut self) -> Result<(), Error> {
        if !self.rest().starts_with("---") || !self.rest()[3..].trim_end_matches(' ').is_empty() {
            return Err(self.unsupported("a document marker with content or `...`"));
        }
        self.next_line();
        Ok(())
    }

    /// Moves to the next content (past spaces, blank lines and full-line comments) and returns
    /// its column; `None` at the end of the text or at a document marker.
    fn peek(&mut self) -> Result<Option<usize>, Error> {
        loop {
            if self.pos >= self.text.len() {
                return Ok(None);
            }
            if self.at_document_marker() {
                return Ok(None);
            }
            let bytes = self.text.as_bytes();
            while self.pos < bytes.len() && bytes[self.pos] == b' ' {
                self.pos += 1;
            }
            match bytes.get(self.pos) {
                None => return Ok(None),
                Some(b'\n') => self.next_line(),
                Some(b'#') if self.pos == self.line_start || bytes[self.pos - 1] == b' ' => {
                    // A comment after content on the same line was refused where the content
                    // was read; this one has the line to itself.
                    if self.text[self.line_start..self.pos]
                        .trim_start_matches(' ')
                        .is_empty()
                    {
                        self.next_line();
                    } else {
                        return Err(self.unsupported("a comment after a value"));
                    }
                }
                Some(b'\t') => return Err(self.unsupported("a tab")),
                Some(_) => return Ok(Some(self.col())),
            }
        }
    }

    /// Whether the content at `pos` is a sequence entry (`- …` or a lone `-`).
    fn at_dash(&self) -> bool {
        let r = self.rest();
        r == "-" || r.starts_with("- ")
    }

    /// A mapping key at `pos`: the key and where its value starts, or `None` if the content
    /// is not `key:` followed by a space or the end of the line.
    fn key_at(&self) -> Result<Option<(Cow<'de, str>, usize)>, Error> {
        let rest = self.rest();
        let (key, after) = match rest.as_bytes().first() {
            Some(b'"' | b'\'') => {
                let (key, len) = quoted(rest).ok_or_else(|| self.unsupported("a quoted key"))?;
                (key, len)
            }
            _ => {
                let Some(colon) = find_colon(rest) else {
                    return Ok(None);
                };
                let key = rest[..colon].trim_end_matches(' ');
                if key.is_empty() || starts_with_indicator(key) || key.contains(" #") {
                    return Err(self.unsupported("a key"));
                }
                (Cow::Borrowed(key), colon)
            }
        };
        let tail = &rest[after..];
        if tail == ":" || tail.starts_with(": ") {
            Ok(Some((key, self.pos + after + 1)))
        } else if matches!(rest.as_bytes().first(), Some(b'"' | b'\'')) {
            Ok(None)
        } else {
            Err(self.unsupported("a key"))
        }
    }

    /// A scalar on the rest of the line, `pos` moved past it: its text and whether it was
    /// plain (only plain scalars are typed).
    fn scalar(&mut self) -> Result<(Cow<'de, str>, bool), Error> {
        let rest = self.rest();
        let (text, len, plain) = match rest.as_bytes().first() {
            Some(b'"' | b'\'') => {
                let (text, len) =
                    quoted(rest).ok_or_else(|| self.unsupported("a multi-line quoted scalar"))?;
                (text, len, false)
            }
            _ => {
                if starts_with_indicator(rest) {
                    return Err(self.unsupported("an anchor, alias, tag or block scalar"));
                }
                if rest.contains(" #") || rest.contains(": ") || rest.ends_with(':') {
                    return Err(self.unsupported("a comment or colon in a plain scalar"));
                }
                let text = rest.trim_end_matches(' ');
                (Cow::Borrowed(text), rest.len(), true)
            }
        };
        if !rest[len..].trim_end_matches(' ').is_empty() {
            return Err(self.unsupported("content after a quoted scalar"));
        }
        self.pos += rest.len();
        Ok((text, plain))
    }
}

/// The end of the line that starts at `from`.
fn line_end(text: &str, from: usize) -> usize {
    memchr::memchr(b'\n', &text.as_bytes()[from..]).map_or(text.len(), |i| from + i)
}

/// The byte index of the first `:` followed by a space or the end, outside quotes.
fn find_colon(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = memchr::memchr(b':', &b[from..]) {
        let at = from + i;
        if matches!(b.get(at + 1), None | Some(b' ')) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// YAML indicators a plain scalar or key in this subset may not start with: flow
/// collections, anchors, aliases, tags, block scalars, directives, reserved characters,
/// complex keys.
fn starts_with_indicator(s: &str) -> bool {
    matches!(
        s.as_bytes().first(),
        Some(
            b'[' | b']'
                | b'{'
                | b'}'
                | b'&'
                | b'*'
                | b'!'
                | b'|'
                | b'>'
                | b'%'
                | b'@'
                | b'`'
                | b'?'
                | b','
        )
    ) || s == "-"
        || s.starts_with("- ")
}

/// A quoted scalar at the start of `s`, closed on the same line: its text and length.
fn quoted(s: &str) -> Option<(Cow<'_, str>, usize)> {
    let b = s.as_bytes();
    match b.first()? {
        b'\'' => {
            let mut i = 1;
            let mut owned: Option<String> = None;
            loop {
                let j = i + memchr::memchr(b'\'', &b[i..])?;
                if b.get(j + 1) == Some(&b'\'') {
                    owned.get_or_insert_with(String::new).push_str(&s[i..=j]);
                    i = j + 2;
                    continue;
                }
                return Some(match owned {
                    Some(mut o) => {
                        o.push_str(&s[i..j]);
                        (Cow::Owned(o), j + 1)
                    }
                    None => (Cow::Borrowed(&s[1..j]), j + 1),
                });
            }
        }
        b'"' => {
            let end = 1 + memchr::memchr2(b'"', b'\\', &b[1..])?;
            if b[end] == b'"' {
                return Some((Cow::Borrowed(&s[1..end]), end + 1));
            }
            let mut out = String::from(&s[1..end]);
            let mut chars = s[end..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => return Some((Cow::Owned(out), end + i + 1)),
                    '\\' => {
                        let (_, e) = chars.next()?;
                        match e {
                            '"' | '\\' | '/' => out.push(e),
                            'n' => out.push('\n'),
                            't' => out.push('\t'),
                            'r' => out.push('\r'),
                            '0' => out.push('\0'),
                            ' ' => out.push(' '),
                            'x' | 'u' | 'U' => {
                                let n = match e {
                                    'x' => 2,
                                    'u' => 4,
                                    _ => 8,
                                };
                                let mut v = 0u32;
                                for _ in 0..n {
                                    v = v * 16 + chars.next()?.1.to_digit(16)?;
                                }
                                out.push(char::from_u32(v)?);
                            }
                            // Line folding and the rarer escapes: the general parser's.
                            _ => return None,
                        }
                    }
                    c => out.push(c),
                }
            }
            None
        }
        _ => None,
    }
}

/// A plain scalar by the core schema. Numbers other than plain decimals (a sign `+`, leading
/// zeros, exponents, hex, octal, `.inf`, and YAML 1.1's `1_000`, `0b1` and `1:30`) are left to
/// the general parser.
enum Typed {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text,
}

fn typed(s: &str) -> Result<Typed, &'static str> {
    Ok(match s {
        "" | "~" | "null" | "Null" | "NULL" => Typed::Null,
        "true" | "True" | "TRUE" => Typed::Bool(true),
        "false" | "False" | "FALSE" => Typed::Bool(false),
        _ if !s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.')) => {
            Typed::Text
        }
        _ => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            let decimal = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            let no_leading_zero = |t: &str| t == "0" || !t.starts_with('0');
            if decimal(digits) && no_leading_zero(digits) {
                return if s.starts_with('-') {
                    s.parse().map(Typed::Signed).map_err(|_| "a large integer")
                } else {
                    s.parse()
                        .map(Typed::Unsigned)
                        .map_err(|_| "a large integer")
                };
            }
            if let Some((i, f)) = digits.split_once('.')
                && decimal(i)
                && decimal(f)
                && no_leading_zero(i)
            {
                return s.parse().map(Typed::Float).map_err(|_| "a float");
            }
            if number_like(s) {
                return Err("a number that is not a plain decimal");
            }
            Typed::Text
        }
    })
}

/// Whether a YAML 1.2 core or 1.1 parser could read `s` as a number.
fn number_like(s: &str) -> bool {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let all = |t: &str, f: fn(u8) -> bool| !t.is_empty() && t.bytes().all(f);
    if let Some(rest) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0o"))
        .or_else(|| unsigned.strip_prefix("0b"))
    {
        return all(rest, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if matches!(
        unsigned,
        ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN"
    ) {
        return true;
    }
    // Sexagesimal (1.1): digits and colons.
    if unsigned.contains(':') {
        return all(unsigned, |b| b.is_ascii_digit() || b == b':');
    }
    // Mantissa and exponent, with 1.1's underscores.
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = mantissa.bytes().filter(|b| *b == b'.').count() <= 1
        && mantissa.bytes().any(|b| b.is_ascii_digit())
        && all(mantissa, |b| b.is_ascii_digit() || b == b'.' || b == b'_');
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        all(e, |b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

/// What a value turned out to be.
enum Node<'de> {
    /// Nothing after the key or dash, and nothing more indented below.
    Empty,
    Scalar(Cow<'de, str>, bool),
    EmptySeq,
    EmptyMap,
    Seq(usize),
    Map(usize),
}

/// The value at the parser's position: a mapping's value (`in_map`) or a sequence's item or
/// a document, whose container is at `parent` (-1 for a document).
pub struct Value<'p, 'de> {
    p: &'p mut Parser<'de>,
    parent: isize,
    in_map: bool,
}

impl<'p, 'de> Value<'p, 'de> {
    fn new(p: &'p mut Parser<'de>, parent: isize, in_map: bool) -> Self {
        Self { p, parent, in_map }
    }

    fn node(&mut self) -> Result<Node<'de>, Error> {
        let p = &mut *self.p;
        let rest = p.rest().trim_start_matches(' ');
        p.pos = p.line_end() - rest.len();
        if rest.is_empty() || p.pos == p.line_start {
            // The value, if any, is on the lines below.
            let Some(col) = p.peek()? else {
                return Ok(Node::Empty);
            };
            let deeper = isize::try_from(col).unwrap_or(isize::MAX) > self.parent;
            let dash = p.at_dash();
            if deeper || (self.in_map && dash && col as isize == self.parent) {
                return if dash {
                    Ok(Node::Seq(col))
                } else if p.key_at()?.is_some() {
                    Ok(Node::Map(col))
                } else if self.parent < 0 {
                    let (text, plain) = p.scalar()?;
                    Ok(Node::Scalar(text, plain))
                } else {
                    Err(p.unsupported("a multi-line scalar"))
                };
            }
            return Ok(Node::Empty);
        }
        if rest.starts_with('#') {
            return Err(p.unsupported("a comment after a key"));
        }
        let col = p.col();
        if p.at_dash() {
            return if self.in_map {
                Err(p.unsupported("a sequence on its key's line"))
            } else {
                Ok(Node::Seq(col))
            };
        }
        match rest.trim_end_matches(' ') {
            "[]" => {
                p.pos = p.line_end();
                return Ok(Node::EmptySeq);
            }
            "{}" => {
                p.pos = p.line_end();
                return Ok(Node::EmptyMap);
            }
            _ => {}
        }
        if p.key_at()?.is_some() {
            return if self.in_map {
                Err(p.unsupported("a mapping on its key's line"))
            } else {
                Ok(Node::Map(col))
            };
        }
        let (text, plain) = p.scalar()?;
        Ok(Node::Scalar(text, plain))
    }

    /// A string wants the text as written, whatever the core schema would make of it; text
    /// that would be null or a boolean is left to the general parser's judgement.
    fn visit_as_text<V: Visitor<'de>>(
        self,
        node: Node<'de>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match node {
            Node::Scalar(text, plain) => {
                if plain && matches!(typed(&text), Ok(Typed::Null | Typed::Bool(_))) {
                    return Err(self.p.unsupported("null or a boolean read as text"));
                }
                visit_text(text, visitor)
            }
            node => self.visit(node, visitor),
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.p.depth += 1;
        if self.p.depth > MAX_DEPTH {
            return Err(self.p.unsupported("nesting this deep"));
        }
        Ok(())
    }

    fn visit<V: Visitor<'de>>(mut self, node: Node<'de>, visitor: V) -> Result<V::Value, Error> {
        match node {
            Node::Empty => visitor.visit_unit(),
            Node::Scalar(text, false) => visit_text(text, visitor),
            Node::Scalar(text, true) => match typed(&text).map_err(|w| self.p.unsupported(w))? {
                Typed::Null => visitor.visit_unit(),
                Typed::Bool(b) => visitor.visit_bool(b),
                Typed::Unsigned(n) => visitor.visit_u64(n),
                Typed::Signed(n) => visitor.visit_i64(n),
                Typed::Float(f) => visitor.visit_f64(f),
                Typed::Text => visit_text(text, visitor),
            },
            Node::EmptySeq => visitor.visit_seq(Empty),
            Node::EmptyMap => visitor.visit_map(Empty),
            Node::Seq(indent) => {
                self.enter()?;
                let v = visitor.visit_seq(BlockSeq {
                    p: &mut *self.p,
                    indent,
                })?;
                self.p.depth -= 1;
                Ok(v)
            }
            Node::Map(indent) => {
                self.enter()?;
                let v = visitor.visit_map(BlockMap {
                    p: &mut *self.p,
                    indent,
                    first: true,
                })?;
                self.p.depth -= 1;
                Ok(v)
            }
        }
    }
}

fn visit_text<'de, V: Visitor<'de>>(text: Cow<'de, str>, visitor: V) -> Result<V::Value, Error> {
    match text {
        Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
        Cow::Owned(s) => visitor.visit_string(s),
    }
}

impl<'de> de::Deserializer<'de> for Value<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let node = self.node()?;
        self.visit(node, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let node = self.node()?;
        let null = match &node {
            Node::Empty => true,
            Node::Scalar(text, true) => matches!(typed(text), Ok(Typed::Null)),
            _ => false,
        };
        if null {
            visitor.visit_none()
        } else {
            visitor.visit_some(Classified { value: self, node })
        }
    }

    fn deserialize_str<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let node = self.node()?;
        self.visit_as_text(node, visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let node = self.node()?;
        Classified { value: self, node }.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(self.p.unsupported("bytes"))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(self.p.unsupported("bytes"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// A value already looked at (by `deserialize_option`).
struct Classified<'p, 'de> {
    value: Value<'p, 'de>,
    node: Node<'de>,
}

impl<'de> de::Deserializer<'de> for Classified<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.value.visit(self.node, visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.value.visit_as_text(self.node, visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.node {
            Node::Scalar(text, _) => visitor.visit_enum(text.into_owned().into_deserializer()),
            _ => Err(self.value.p.unsupported("an enum that is not a scalar")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// `[]` and `{}`.
struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        _: T,
    ) -> Result<Option<T::Value>, Error> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, Error> {
        Ok(None)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<T::Value, Error> {
        Err(Error::Custom("a value without its key".into()))
    }
}

struct BlockSeq<'p, 'de> {
    p: &'p mut Parser<'de>,
    indent: usize,
}

impl<'de> SeqAccess<'de> for BlockSeq<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(col) = self.p.peek()? else {
            return Ok(None);
        };
        if col < self.indent || (col == self.indent && !self.p.at_dash()) {
            return Ok(None);
        }
        if col > self.indent {
            return Err(self
                .p
                .unsupported("a line indented deeper than its sequence"));
        }
        self.p.pos += 1;
        let parent = isize::try_from(self.indent).unwrap_or(isize::MAX);
        seed.deserialize(Value::new(self.p, parent, false))
            .map(Some)
    }
}

struct BlockMap<'p, 'de> {
    p: &'p mut Parser<'de>,
    indent: usize,
    first: bool,
}

impl<'de> MapAccess<'de> for BlockMap<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(col) = self.p.peek()? else {
            return Ok(None);
        };
        if !self.first && col < self.indent {
            return Ok(None);
        }
        self.first = false;
        if col != self.indent {
            return Err(self
                .p
                .unsupported("a line indented deeper than its mapping"));
        }
        if self.p.at_dash() {
            // A sequence at a mapping's indentation belongs to the key above it, which took
            // it; one here has no key.
            return Err(self.p.unsupported("a sequence entry among keys"));
        }
        let Some((key, value_at)) = self.p.key_at()? else {
            return Err(self.p.unsupported("a line that is not `key: value`"));
        };
        self.p.pos = value_at;
        match key {
            Cow::Borrowed(k) => seed.deserialize(de::value::BorrowedStrDeserializer::new(k)),
            Cow::Owned(k) => seed.deserialize(de::value::StringDeserializer::new(k)),
        }
        .map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let parent = isize::try_from(self.indent).unwrap_or(isize::MAX);
        seed.deserialize(Value::new(self.p, parent, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(text: &str) -> Result<Vec<serde_json::Value>, Error> {
        let mut docs = Vec::new();
        read_documents(text, |d| {
            docs.push(de::Deserialize::deserialize(d)?);
            Ok(())
        })?;
        Ok(docs)
    }

    fn general(text: &str) -> Vec<serde_json::Value> {
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        serde_saphyr::from_str_multiple_with_options(text, options).expect("valid YAML")
    }

    /// Read by both parsers alike.
    #[track_caller]
    fn same(text: &str) {
        let fast = fast(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(fast, general(text), "{text}");
    }

    #[track_caller]
    fn left_to_the_general_parser(text: &str) {
        assert!(
            matches!(fast(text), Err(Error::Unsupported { .. })),
            "{text}: {:?}",
            fast(text)
        );
    }

    #[test]
    fn kubectls_layout_reads_as_the_general_parser_reads_it() {
        same(
            "apiVersion: v1\nitems:\n- apiVersion: crd.projectcalico.org/v1\n  kind: IPAMBlock\n  \
             metadata:\n    annotations:\n      projectcalico.org/metadata: \"{\\\"creationTimestamp\\\":null}\"\n    \
             name: 10-128-0-0-26\n    resourceVersion: \"100000\"\n  spec:\n    affinity: \"host:bench-0\"\n    \
             allocations:\n    - 0\n    - null\n    - 1\n    attributes:\n    - handle_id: vxlan-tunnel-addr\n      \
             secondary:\n        node: bench-0\n        type: vxlanTunnelAddress\n    cidr: 10.128.0.0/26\n    \
             deleted: false\n    sequenceNumberForAllocation:\n      \"1\": 1700000001\n    unallocated: []\n    \
             extra: {}\nkind: List\nmetadata:\n  resourceVersion: \"\"\n",
        );
    }

    #[test]
    fn scalars_are_typed_as_the_general_parser_types_them() {
        for v in [
            "1",
            "0",
            "-3",
            "1.5",
            "-0.25",
            "true",
            "False",
            "TRUE",
            "null",
            "~",
            "Null",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "10.0.0.1",
            "10.0.0.0/26",
            "host:a",
            "a b c",
            "'q'",
            "'it''s'",
            "\"a\\tb\\u00e9\\\"\"",
            "\"\"",
            "''",
            "x-1",
            "1-2",
            "v1.2.3",
            "2026-11-20T09:12:44Z",
            "\"12\"",
            "all()",
            "has(a) && b == 'c'",
            "a:b",
            "http://x:80/y",
            "18446744073709551615",
            "-9223372036854775808",
        ] {
            same(&format!("k: {v}\nl:\n- {v}\n"));
        }
    }

    #[test]
    fn documents_comments_and_nesting() {
        same("# head\n---\na: 1\n---\nb:\n  c:\n  - - 1\n    - 2\n  - d: 3\n    e: []\n");
        same("---\n---\na: 1\n");
        same("");
        same("# only a comment\n");
        same("- a\n- b:\n    c: 1\n-\n  d: 2\n- \n");
        same("a:\nb: 2\n");
        same("a:\n  # a comment inside\n  b: 1\n\n  c: 2\n");
    }

    #[test]
    fn what_is_outside_the_subset_is_left_to_the_general_parser() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: >\n  text\n",
            "a: [1, 2]\n",
            "a: {b: 1}\n",
            "a: long\n  continued\n",
            "a: \"open\n  close\"\n",
            "a: 1 # comment\n",
            "a: 0755\n",
            "a: 1e3\n",
            "a: .inf\n",
            "a: 0x1f\n",
            "a: +1\n",
            "a:\n\tb: 1\n",
            "a: 1\r\n",
            "? a\n: 1\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\n",
            "a: b: c\n",
            "a: \"\\N\"\n",
        ] {
            left_to_the_general_parser(text);
        }
        let deep = "- ".repeat(MAX_DEPTH + 1) + "x\n";
        left_to_the_general_parser(&deep);
    }

    /// Every YAML file of this repository that the general parser reads (datastores, pasted
    /// pools, the chart's values and CI files, alert tests) reads alike when the subset takes
    /// it.
    #[test]
    fn the_repositorys_yaml_reads_alike() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && !p.ends_with("target") && !p.ends_with(".git") {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    out.push(p);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in ["agent/src", "agent/tests", "deploy", "tests"] {
            walk(&root.join(dir), &mut files);
        }
        let mut taken = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("readable");
            let mut options = serde_saphyr::Options::default();
            options.strict_booleans = true;
            let Ok(general) = serde_saphyr::from_str_multiple_with_options::<
                serde_json::Value,
                Vec<_>,
            >(&text, options) else {
                continue;
            };
            if let Ok(fast) = fast(&text) {
                assert_eq!(fast, general, "{}", f.display());
                taken.push(
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        // Pasted calicoctl output and a real thread's pool are; hand-written flow style
        // (`{name: p}`) is not.
        for printed in [
            "calico-pools.yaml",
            "ippool.yaml",
            "vpc-cni-lab.yaml",
            "values.yaml",
        ] {
            assert!(
                taken.iter().any(|t| t == printed),
                "{printed} not in the subset: {taken:?}"
            );
        }
    }

    #[test]
    fn a_generated_cluster_reads_alike() {
        use xtask::cluster::{Cluster, Format};
        for (_, text) in Cluster::new(20).datastore(Format::Yaml) {
            same(&text);
        }
    }
}
