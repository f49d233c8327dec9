//! `nft -j list ruleset`, parsed leniently: every object is read on its own from
//! `serde_json::Value`, so an expression or object kind we do not know is skipped and counted,
//! never a reason to lose the rest of the ruleset (the typed `nftables` crate model fails hard on
//! constructs it does not model).

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
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            rs.errors.push(format!("item {i}: not an object"));
            continue;
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
    Ok(rs)
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

/// Reads the live ruleset with `nft -j list ruleset`.
pub async fn read() -> Result<NftRuleset, NftReadError> {
    let out = exec::run("nft", &["-j", "list", "ruleset"]).await?;
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

    #[test]
    fn rejects_non_ruleset_json_with_a_reason() {
        assert!(matches!(parse_json("{\"x\":1}"), Err(NftParseError::Shape)));
        assert!(matches!(
            parse_json("table ip calico {"),
            Err(NftParseError::Json(_))
        ));
    }
}
