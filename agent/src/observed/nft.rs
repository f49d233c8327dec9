//! `nft -j list ruleset`, run by the `nftables` crate, each object read on its own: through the
//! crate's typed schema where it parses, else leniently from `serde_json::Value`. The schema
//! fails hard on constructs it does not model (statements `last`/`flow`/`reset`/`secmark`,
//! concatenated set types, single-flag `fib`, rules without `expr`: shared/reference/crates.md),
//! so one such object is read by the lenient reader and never sinks the rest of the ruleset.

use nftables::{
    expr::{Expression, NamedExpression, Payload, SetItem},
    schema::{NfListObject, NfObject, SetTypeValue},
    stmt::{Counter, Operator, Statement},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::exec;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRuleset {
    pub tables: Vec<NftTable>,
    pub chains: Vec<NftChain>,
    pub rules: Vec<NftRule>,
    pub sets: Vec<NftSet>,
    /// Objects or fields that could not be understood, with their position.
    pub errors: Vec<String>,
    /// Set when the listing was a pasted part of the ruleset (no `table` line around it):
    /// what it shows is present, nothing can be concluded from what it does not show. Says
    /// which table it was assigned to and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    pub family: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// Base chains only: `type`, `hook`, `prio`, `policy`.
    pub kind: Option<String>,
    pub hook: Option<String>,
    pub priority: Option<i64>,
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    pub comment: Option<String>,
    /// Final verdict: `accept`, `drop`, `return`, `jump <chain>`, `goto <chain>`, `vmap`.
    pub verdict: Option<String>,
    /// Chain named by a `jump`/`goto`.
    pub target: Option<String>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Expression kinds in order (`match`, `counter`, `xt`, `jump`…), for display and tests.
    pub exprs: Vec<String>,
    /// Destination ports the rule matches (`tcp dport 22`, `udp dport { 53, 67 }`), with their
    /// protocol: what failsafe checks need.
    #[serde(default)]
    pub dports: Vec<(String, u16)>,
}

impl NftRule {
    /// Felix's rule hash: the comment text before the first `;` when it starts with `cali:`
    /// (nft mode), or the whole comment (iptables-nft keeps the first `-m comment`).
    pub fn felix_hash(&self) -> Option<&str> {
        let c = self.comment.as_deref()?.strip_prefix("cali:")?;
        Some(c.split(';').next().unwrap_or(c))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftSet {
    pub family: String,
    pub table: String,
    pub name: String,
    pub is_map: bool,
    /// Type as nft prints it; concatenations are joined with ` . `.
    pub set_type: String,
    pub elements: usize,
}

impl NftRuleset {
    /// Felix's nftables-mode table, `ip calico` (or `ip6 calico`).
    pub fn calico_table(&self, family: &str) -> Option<&NftTable> {
        self.tables
            .iter()
            .find(|t| t.family == family && t.name == "calico")
    }

    pub fn chains_of<'a>(
        &'a self,
        family: &'a str,
        table: &'a str,
    ) -> impl Iterator<Item = &'a NftChain> {
        self.chains
            .iter()
            .filter(move |c| c.family == family && c.table == table)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftParseError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no top-level \"nftables\" array")]
    Shape,
}

/// Parses the JSON that `nft -j list ruleset` prints.
pub fn parse_json(text: &str) -> Result<NftRuleset, NftParseError> {
    let root: Value = serde_json::from_str(text)?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(NftParseError::Shape)?;
    let mut rs = NftRuleset::default();
    for (i, item) in items.iter().enumerate() {
        if let Ok(NfObject::ListObject(object)) = NfObject::deserialize(item) {
            typed(&mut rs, object);
            continue;
        }
        lenient(&mut rs, i, item);
    }
    Ok(rs)
}

/// One object the crate's schema understood.
fn typed(rs: &mut NftRuleset, object: NfListObject<'_>) {
    match object {
        NfListObject::Table(t) => rs.tables.push(NftTable {
            family: name_of(&t.family),
            name: t.name.into_owned(),
        }),
        NfListObject::Chain(c) => rs.chains.push(NftChain {
            family: name_of(&c.family),
            table: c.table.into_owned(),
            name: c.name.into_owned(),
            kind: c._type.as_ref().map(name_of),
            hook: c.hook.as_ref().map(name_of),
            priority: c.prio.map(i64::from),
            policy: c.policy.as_ref().map(name_of),
        }),
        NfListObject::Rule(r) => {
            let mut rule = NftRule {
                family: name_of(&r.family),
                table: r.table.into_owned(),
                chain: r.chain.into_owned(),
                handle: r.handle.map(u64::from),
                comment: r.comment.map(|c| c.into_owned()),
                ..Default::default()
            };
            for stmt in r.expr.iter() {
                typed_statement(&mut rule, stmt);
            }
            rs.rules.push(rule);
        }
        NfListObject::Set(set) => rs.sets.push(NftSet {
            family: name_of(&set.family),
            table: set.table.to_string(),
            name: set.name.to_string(),
            is_map: false,
            set_type: set_type(&set.set_type),
            elements: set.elem.as_ref().map_or(0, |e| e.len()),
        }),
        NfListObject::Map(map) => rs.sets.push(NftSet {
            family: name_of(&map.family),
            table: map.table.to_string(),
            name: map.name.to_string(),
            is_map: true,
            set_type: set_type(&map.set_type),
            elements: map.elem.as_ref().map_or(0, |e| e.len()),
        }),
        // metainfo, flowtables, counters, quotas, ct helpers…: not needed for verification.
        _ => {}
    }
}

/// What the checks read of one statement, as [`parse_rule`] reads it from JSON.
fn typed_statement(rule: &mut NftRule, stmt: &Statement<'_>) {
    let name = statement_name(stmt);
    match stmt {
        Statement::Counter(Counter::Anonymous(Some(c))) => {
            rule.packets = c.packets.map(|n| n as u64);
            rule.bytes = c.bytes.map(|n| n as u64);
        }
        Statement::Counter(_) => {
            rule.packets = None;
            rule.bytes = None;
        }
        Statement::Accept(_)
        | Statement::Drop(_)
        | Statement::Return(_)
        | Statement::Continue(_)
        | Statement::Reject(_) => rule.verdict = Some(name.clone()),
        Statement::Jump(j) | Statement::Goto(j) => {
            rule.verdict = Some(format!("{name} {}", j.target));
            rule.target = Some(j.target.to_string());
        }
        Statement::VerdictMap(_) => rule.verdict = Some("vmap".into()),
        Statement::Match(m) => {
            if let (
                Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))),
                Operator::EQ | Operator::IN,
            ) = (&m.left, m.op)
                && p.field == "dport"
            {
                let port = |e: &Expression<'_>| match e {
                    Expression::Number(n) => u16::try_from(*n).ok(),
                    _ => None,
                };
                let ports: Vec<u16> = match &m.right {
                    Expression::Named(NamedExpression::Set(items)) => items
                        .iter()
                        .filter_map(|i| match i {
                            SetItem::Element(e) => port(e),
                            _ => None,
                        })
                        .collect(),
                    e => port(e).into_iter().collect(),
                };
                rule.dports
                    .extend(ports.into_iter().map(|n| (p.protocol.to_string(), n)));
            }
        }
        _ => {}
    }
    rule.exprs.push(name);
}

/// The statement's key in nft's JSON (`match`, `counter`, `jump`, `ct helper`…).
fn statement_name(stmt: &Statement<'_>) -> String {
    let known = match stmt {
        Statement::Accept(_) => "accept",
        Statement::Drop(_) => "drop",
        Statement::Continue(_) => "continue",
        Statement::Return(_) => "return",
        Statement::Jump(_) => "jump",
        Statement::Goto(_) => "goto",
        Statement::Match(_) => "match",
        Statement::Counter(_) => "counter",
        Statement::Reject(_) => "reject",
        Statement::VerdictMap(_) => "vmap",
        Statement::XT(_) => "xt",
        _ => "",
    };
    if !known.is_empty() {
        return known.into();
    }
    // The rest, as the crate names them when it writes them back.
    serde_json::to_value(stmt)
        .ok()
        .and_then(|v| match v {
            Value::Object(o) => o.keys().next().cloned(),
            Value::String(s) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

/// A family, hook, chain type or policy as nft writes it (`ip`, `input`, `filter`, `accept`).
fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn set_type(t: &SetTypeValue<'_>) -> String {
    match t {
        SetTypeValue::Single(t) => name_of(t),
        SetTypeValue::Concatenated(parts) => {
            parts.iter().map(name_of).collect::<Vec<_>>().join(" . ")
        }
    }
}

/// One object read from its JSON alone: what the schema does not model is skipped, and an
/// item that is not an object is counted.
fn lenient(rs: &mut NftRuleset, i: usize, item: &Value) {
    {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            rs.errors.push(format!("item {i}: not an object"));
            return;
        };
        match kind.as_str() {
            "metainfo" => {}
            "table" => rs.tables.push(NftTable {
                family: str_of(body, "family"),
                name: str_of(body, "name"),
            }),
            "chain" => rs.chains.push(NftChain {
                family: str_of(body, "family"),
                table: str_of(body, "table"),
                name: str_of(body, "name"),
                kind: opt_str(body, "type"),
                hook: opt_str(body, "hook"),
                priority: body.get("prio").and_then(Value::as_i64),
                policy: opt_str(body, "policy"),
            }),
            "rule" => rs.rules.push(parse_rule(body)),
            "set" | "map" => rs.sets.push(NftSet {
                family: str_of(body, "family"),
                table: str_of(body, "table"),
                name: str_of(body, "name"),
                is_map: kind == "map",
                set_type: type_of(body.get("type")),
                elements: body
                    .get("elem")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            }),
            // flowtables, counters, quotas, ct helpers…: not needed for verification.
            _ => {}
        }
    }
}

fn parse_rule(body: &Value) -> NftRule {
    let mut rule = NftRule {
        family: str_of(body, "family"),
        table: str_of(body, "table"),
        chain: str_of(body, "chain"),
        handle: body.get("handle").and_then(Value::as_u64),
        comment: opt_str(body, "comment"),
        ..Default::default()
    };
    for expr in body
        .get("expr")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some((name, arg)) = expr.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        rule.exprs.push(name.clone());
        match name.as_str() {
            "counter" => {
                rule.packets = arg.get("packets").and_then(Value::as_u64);
                rule.bytes = arg.get("bytes").and_then(Value::as_u64);
            }
            "accept" | "drop" | "return" | "continue" | "reject" => {
                rule.verdict = Some(name.clone())
            }
            "jump" | "goto" => {
                let target = arg
                    .get("target")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                rule.verdict = Some(format!("{name} {}", target.as_deref().unwrap_or("?")));
                rule.target = target;
            }
            "vmap" => rule.verdict = Some("vmap".into()),
            "match" => rule.dports.extend(dport_match(arg)),
            // iptables-nft renders a `-j cali-X` target as an xt expression when it cannot
            // translate it; a jump stays a native `jump` expression.
            _ => {}
        }
    }
    rule
}

/// `{"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}`,
/// with `right` a number or `{"set": [..]}`.
fn dport_match(m: &Value) -> Vec<(String, u16)> {
    let payload = m.pointer("/left/payload");
    let proto = payload
        .and_then(|p| p.get("protocol"))
        .and_then(Value::as_str);
    let field = payload.and_then(|p| p.get("field")).and_then(Value::as_str);
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let (Some(proto), Some("dport"), "==" | "in") = (proto, field, op) else {
        return Vec::new();
    };
    let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
    let ports: Vec<u16> = match m.get("right") {
        Some(Value::Object(o)) => o
            .get("set")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(port)
            .collect(),
        Some(v) => port(v).into_iter().collect(),
        None => Vec::new(),
    };
    ports.into_iter().map(|p| (proto.to_string(), p)).collect()
}

fn str_of(v: &Value, key: &str) -> String {
    opt_str(v, key).unwrap_or_default()
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn type_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" . "),
        _ => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftReadError {
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error("nft -j list ruleset")]
    Parse(#[source] NftParseError),
}

impl NftReadError {
    /// `nft` is not installed: nftables is then simply not part of this node's picture.
    pub fn not_installed(&self) -> bool {
        matches!(self, Self::Exec(exec::ExecError::NotFound { .. }))
    }
}

/// Reads the live ruleset with `nft -j list ruleset`, run by the `nftables` crate. The crate
/// owns the process, so a hung `nft` is abandoned after the timeout rather than killed.
pub async fn read() -> Result<NftRuleset, NftReadError> {
    use nftables::helper::{NftablesError, get_current_ruleset_raw_async};
    const NFT: &str = "nft";
    let run = get_current_ruleset_raw_async(Some(NFT), ["list", "ruleset"]);
    let out = match tokio::time::timeout(exec::TIMEOUT, run).await {
        Err(_) => {
            return Err(exec::ExecError::Timeout {
                program: NFT.into(),
            }
            .into());
        }
        Ok(Ok(out)) => out,
        Ok(Err(NftablesError::NftExecution { inner, .. }))
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(exec::ExecError::NotFound {
                program: NFT.into(),
            }
            .into());
        }
        Ok(Err(NftablesError::NftExecution { inner, .. })) => {
            return Err(exec::ExecError::Spawn {
                program: NFT.into(),
                source: inner,
            }
            .into());
        }
        Ok(Err(NftablesError::NftFailed { stderr, .. })) => {
            return Err(exec::failure(NFT, "non-zero exit".into(), stderr.trim().into()).into());
        }
        Ok(Err(e)) => {
            return Err(exec::failure(NFT, "unreadable output".into(), e.to_string()).into());
        }
    };
    if out.trim().is_empty() {
        // nft prints nothing at all when there is no table in this namespace.
        return Ok(NftRuleset::default());
    }
    parse_json(&out).map_err(NftReadError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALICO_NFT: &str = include_str!("testdata/nft-calico.json");
    const OUTSIDE_THE_SCHEMA: [usize; 2] = [3, 23];

    #[test]
    fn parses_calico_nft_mode_ruleset() {
        let rs = parse_json(CALICO_NFT).expect("valid JSON");
        insta::assert_yaml_snapshot!(rs);
    }

    #[test]
    fn finds_felix_hooks_and_hashes() {
        let rs = parse_json(CALICO_NFT).expect("valid JSON");
        assert!(rs.calico_table("ip").is_some());
        let input = rs
            .chains
            .iter()
            .find(|c| c.name == "filter-INPUT")
            .expect("base chain");
        assert_eq!(
            (input.hook.as_deref(), input.priority),
            (Some("input"), Some(0))
        );
        let jump = rs
            .rules
            .iter()
            .find(|r| r.chain == "filter-INPUT")
            .expect("jump rule");
        assert_eq!(jump.target.as_deref(), Some("filter-cali-INPUT"));
        assert_eq!(jump.felix_hash(), Some("Cz_u1IQiXIMmKD4c"));
        assert_eq!((jump.packets, jump.bytes), (Some(17), Some(2040)));
    }

    #[test]
    fn unknown_expressions_and_objects_do_not_fail() {
        let text = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"x","handle":1}},
            {"flowtable":{"name":"ft"}},
            {"rule":{"family":"inet","table":"x","chain":"c","handle":3,
              "expr":[{"some-future-expr":{"a":1}},{"last":null},{"drop":null}]}},
            {"rule":{"family":"inet","table":"x","chain":"c","handle":4}},
            42]}"#;
        let rs = parse_json(text).expect("lenient parse");
        assert_eq!(rs.rules.len(), 2);
        assert_eq!(rs.rules[0].verdict.as_deref(), Some("drop"));
        assert_eq!(rs.rules[0].exprs, ["some-future-expr", "last", "drop"]);
        assert_eq!(rs.errors, ["item 5: not an object"]);
    }

    /// Each object of Felix's ruleset that the schema reads, it reads exactly as the lenient
    /// reader does; the few it cannot read are read leniently.
    #[test]
    fn the_typed_schema_reads_felixs_ruleset_as_the_lenient_reader_does() {
        let root: Value = serde_json::from_str(CALICO_NFT).expect("json");
        let items = root["nftables"].as_array().expect("array");
        let mut outside = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Ok(NfObject::ListObject(object)) = NfObject::deserialize(item) else {
                outside.push(i);
                continue;
            };
            let (mut via_schema, mut via_json) = (NftRuleset::default(), NftRuleset::default());
            typed(&mut via_schema, object);
            lenient(&mut via_json, i, item);
            assert_eq!(via_schema, via_json, "item {i}: {item}");
        }
        // Felix's dispatch map of verdicts, and the NAT-outgoing rule (its `!=` fib match and
        // `masquerade` flags): read leniently, the rest through the schema.
        assert_eq!(outside, OUTSIDE_THE_SCHEMA, "{} objects", items.len());
    }

    /// One rule the schema cannot read (a `last` statement, nftables-rs #70) is read by the
    /// lenient reader; the objects around it still go through the schema.
    #[test]
    fn an_object_outside_the_schema_falls_back_alone() {
        let last = r#"{"rule":{"family":"ip","table":"calico","chain":"c","handle":9,
            "expr":[{"last":null},{"counter":{"packets":3,"bytes":180}},{"jump":{"target":"x"}}]}}"#;
        let item: Value = serde_json::from_str(last).expect("json");
        assert!(NfObject::deserialize(&item).is_err());
        let text = format!(
            r#"{{"nftables":[{{"table":{{"family":"ip","name":"calico","handle":1}}}},{last}]}}"#
        );
        let rs = parse_json(&text).expect("parses");
        assert_eq!(rs.tables.len(), 1);
        let r = &rs.rules[0];
        assert_eq!(
            (r.exprs.as_slice(), r.target.as_deref(), r.packets),
            (
                &["last".to_string(), "counter".into(), "jump".into()][..],
                Some("x"),
                Some(3)
            )
        );
        assert!(rs.errors.is_empty());
    }

    #[test]
    fn rejects_non_ruleset_json_with_a_reason() {
        assert!(matches!(parse_json("{\"x\":1}"), Err(NftParseError::Shape)));
        assert!(matches!(
            parse_json("table ip calico {"),
            Err(NftParseError::Json(_))
        ));
    }
}
