//! `iptables-save [-c]` output: parsing, and running it for both backends.
//!
//! The legacy (x_tables) and nft backends hold separate rulesets on the same node; which one
//! Felix writes to depends on its detection, so both are dumped and labelled.

use serde::{Deserialize, Serialize};

use super::exec::{self, ExecError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        }
    }
}

/// One `iptables-save` (or `ip6tables-save`) of one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IptablesDump {
    pub backend: Option<Backend>,
    /// 4 or 6.
    pub family: u8,
    pub tables: Vec<IptTable>,
    /// Lines that could not be parsed, with their line number; they never sink the dump.
    pub errors: Vec<String>,
    /// Set when the text held only part of the ruleset (rules pasted without their `*table`
    /// header, an `iptables -L` listing, a dump cut before `COMMIT`): what it shows is
    /// present, and nothing can be concluded from what it does not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<Fragment>,
}

/// What a partial ruleset holds, and how its tables were decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// The form it came in: `rules without a *table header`, `iptables -L listing`, ….
    pub form: String,
    /// Per table of the fragment, why its rules were assigned to it (`named by the command
    /// (-t nat)`, `MASQUERADE targets mean nat`, `unknown: …`).
    pub tables: Vec<(String, String)>,
    /// Chains known to be printed whole, as `table chain`: a listing's chain block ended
    /// before the next one started; a saved chain's rules were followed by another chain's.
    pub complete_chains: Vec<String>,
    /// Chains `iptables -L` printed with `(0 references)`, as `table chain`: nothing jumps to
    /// them, which is evidence in its own right.
    pub unreferenced: Vec<String>,
}

impl Fragment {
    pub fn is_complete(&self, table: &str, chain: &str) -> bool {
        self.complete_chains
            .iter()
            .any(|c| c.split_once(' ') == Some((table, chain)))
    }

    pub fn is_unreferenced(&self, table: &str, chain: &str) -> bool {
        self.unreferenced
            .iter()
            .any(|c| c.split_once(' ') == Some((table, chain)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IptTable {
    /// `filter`, `nat`, `mangle`, `raw`, `security`; in a fragment also `unknown`.
    pub name: String,
    pub chains: Vec<IptChain>,
    pub rules: Vec<IptRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IptChain {
    pub name: String,
    /// Policy of a built-in chain (`ACCEPT`, `DROP`); `None` for user chains (`-`).
    pub policy: Option<String>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IptRule {
    pub chain: String,
    /// The rule as printed after `-A <chain> `.
    pub spec: String,
    /// `-j` target, or `-g` target for gotos.
    pub target: Option<String>,
    pub goto: bool,
    /// Values of every `--comment`, in order.
    pub comments: Vec<String>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

impl IptRule {
    /// Felix's rule hash: the first comment when it starts with `cali:`.
    pub fn felix_hash(&self) -> Option<&str> {
        self.comments.first().and_then(|c| c.strip_prefix("cali:"))
    }
}

impl IptTable {
    pub fn chain(&self, name: &str) -> Option<&IptChain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a IptRule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

impl IptablesDump {
    pub fn table(&self, name: &str) -> Option<&IptTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Chains whose name marks them as Felix's (`cali-` prefix).
    pub fn felix_chain_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .filter(|c| c.name.starts_with("cali-"))
            .count()
    }

    pub fn label(&self) -> String {
        let bin = if self.family == 6 {
            "ip6tables"
        } else {
            "iptables"
        };
        let label = match self.backend {
            Some(b) => format!("{bin}-{}", b.name()),
            None => bin.to_string(),
        };
        if self.fragment.is_some() {
            format!("{label} (fragment)")
        } else {
            label
        }
    }
}

/// Parses `iptables-save` output, with or without `-c` counters.
pub fn parse(text: &str, backend: Option<Backend>, family: u8) -> IptablesDump {
    let mut dump = IptablesDump {
        backend,
        family,
        ..Default::default()
    };
    let mut current: Option<IptTable> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 1;
        if let Some(name) = line.strip_prefix('*') {
            if let Some(t) = current.take() {
                dump.tables.push(t);
            }
            current = Some(IptTable {
                name: name.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        if line == "COMMIT" {
            if let Some(t) = current.take() {
                dump.tables.push(t);
            }
            continue;
        }
        let Some(table) = current.as_mut() else {
            dump.errors
                .push(format!("line {lineno}: outside a table: {line}"));
            continue;
        };
        let parsed = if let Some(rest) = line.strip_prefix(':') {
            parse_chain(rest)
                .map(|c| table.chains.push(c))
                .map_err(String::from)
        } else {
            parse_rule(line).map(|r| table.rules.push(r))
        };
        if let Err(e) = parsed {
            dump.errors.push(format!("line {lineno}: {e}: {line}"));
        }
    }
    if let Some(t) = current.take() {
        // A dump cut off before COMMIT still yields what it has.
        dump.errors.push(format!(
            "table {} not terminated by COMMIT (truncated dump?)",
            t.name
        ));
        dump.tables.push(t);
    }
    dump
}

pub(crate) fn parse_chain(rest: &str) -> Result<IptChain, &'static str> {
    let mut parts = rest.split_whitespace();
    let name = parts.next().ok_or("chain line without a name")?.to_string();
    let policy = parts.next().filter(|p| *p != "-").map(str::to_string);
    let (packets, bytes) = match parts.next() {
        Some(c) => parse_counters(c).ok_or("bad chain counters")?,
        None => (None, None),
    };
    Ok(IptChain {
        name,
        policy,
        packets,
        bytes,
    })
}

fn parse_counters(token: &str) -> Option<(Option<u64>, Option<u64>)> {
    let inner = token.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    Some((Some(p.parse().ok()?), Some(b.parse().ok()?)))
}

pub(crate) fn parse_rule(line: &str) -> Result<IptRule, String> {
    let (counters, rest) = match line.strip_prefix('[') {
        Some(_) => {
            let end = line.find(']').ok_or("unterminated counters")?;
            let c = parse_counters(&line[..=end]).ok_or("bad rule counters")?;
            (c, line[end + 1..].trim_start())
        }
        None => ((None, None), line),
    };
    let rest = rest.strip_prefix("-A ").ok_or("expected -A <chain>")?;
    let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
    let tokens = tokenize(spec)?;
    let mut rule = IptRule {
        chain: chain.to_string(),
        spec: spec.to_string(),
        packets: counters.0,
        bytes: counters.1,
        ..Default::default()
    };
    let mut it = tokens.iter();
    while let Some(tok) = it.next() {
        match tok.as_str() {
            "-j" | "--jump" => rule.target = it.next().cloned(),
            "-g" | "--goto" => {
                rule.target = it.next().cloned();
                rule.goto = true;
            }
            "--comment" => rule.comments.extend(it.next().cloned()),
            _ => {}
        }
    }
    Ok(rule)
}

/// Splits a rule spec into words, honouring the double quotes and backslash escapes that
/// iptables-save uses for comments.
fn tokenize(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Dumps every backend and family present on this machine. A backend whose binary is missing
/// is skipped silently; one that fails (e.g. no CAP_NET_ADMIN) is reported.
pub async fn read_all(unavailable: &mut Vec<super::Unavailable>) -> Vec<IptablesDump> {
    let mut dumps = Vec::new();
    let mut any_binary = false;
    for (bin, backend, family) in [
        ("iptables-legacy-save", Backend::Legacy, 4),
        ("iptables-nft-save", Backend::Nft, 4),
        ("ip6tables-legacy-save", Backend::Legacy, 6),
        ("ip6tables-nft-save", Backend::Nft, 6),
    ] {
        match exec::run(bin, &["-c"]).await {
            Ok(out) => {
                any_binary = true;
                dumps.push(parse(&out, Some(backend), family));
            }
            Err(ExecError::NotFound { .. }) => {}
            Err(e) => {
                any_binary = true;
                unavailable.push(super::Unavailable::new(
                    family_source(family),
                    bin,
                    e.to_string(),
                ));
            }
        }
    }
    if !any_binary {
        // Distributions without the split binaries: label the single one by its version line.
        for (bin, family) in [("iptables-save", 4), ("ip6tables-save", 6)] {
            match exec::run(bin, &["-c"]).await {
                Ok(out) => {
                    let backend = detect_backend_from_version(bin).await;
                    dumps.push(parse(&out, backend, family));
                }
                Err(e) => unavailable.push(super::Unavailable::new(
                    family_source(family),
                    bin,
                    e.to_string(),
                )),
            }
        }
    }
    dumps
}

fn family_source(family: u8) -> super::Source {
    if family == 6 {
        super::Source::Ip6tables
    } else {
        super::Source::Iptables
    }
}

async fn detect_backend_from_version(bin: &str) -> Option<Backend> {
    let v = exec::run(bin, &["--version"]).await.ok()?;
    if v.contains("nf_tables") {
        Some(Backend::Nft)
    } else if v.contains("legacy") {
        Some(Backend::Legacy)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FELIX_SAVE: &str = include_str!("testdata/iptables-save-felix.txt");

    #[test]
    fn parses_felix_dump_with_counters() {
        let dump = parse(FELIX_SAVE, Some(Backend::Nft), 4);
        insta::assert_yaml_snapshot!(dump);
    }

    #[test]
    fn extracts_hash_target_and_comments() {
        let dump = parse(FELIX_SAVE, Some(Backend::Nft), 4);
        let filter = dump.table("filter").expect("filter table");
        let jump = filter.rules_of("INPUT").next().expect("INPUT rule");
        assert_eq!(jump.felix_hash(), Some("Cz_u1IQiXIMmKD4c"));
        assert_eq!(jump.target.as_deref(), Some("cali-INPUT"));
        assert_eq!((jump.packets, jump.bytes), (Some(1043), Some(95117)));
        let vxlan = filter
            .rules_of("cali-INPUT")
            .find(|r| {
                r.comments
                    .iter()
                    .any(|c| c == "Allow IPv4 VXLAN packets from allowed hosts")
            })
            .expect("vxlan allow rule");
        assert_eq!(vxlan.target.as_deref(), Some("ACCEPT"));
        let goto = filter
            .rules_of("cali-INPUT")
            .find(|r| r.goto)
            .expect("goto rule");
        assert_eq!(goto.target.as_deref(), Some("cali-wl-to-host"));
        assert!(dump.errors.is_empty(), "{:?}", dump.errors);
    }

    #[test]
    fn bad_lines_are_reported_not_fatal() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"unterminated -j ACCEPT\n\
                    garbage line\n-A INPUT -j cali-INPUT\n";
        let dump = parse(text, None, 4);
        let filter = dump.table("filter").expect("filter table survives");
        assert_eq!(filter.rules.len(), 1);
        assert_eq!(filter.rules[0].target.as_deref(), Some("cali-INPUT"));
        assert_eq!(dump.errors.len(), 3, "{:?}", dump.errors);
        assert!(dump.errors[0].contains("line 3: unterminated quote"));
        assert!(dump.errors[2].contains("not terminated by COMMIT"));
    }

    #[test]
    fn tokenizer_handles_escaped_quotes() {
        let t = tokenize(r#"-m comment --comment "a \"quoted\" word" -j X"#).expect("tokens");
        assert_eq!(
            t,
            ["-m", "comment", "--comment", "a \"quoted\" word", "-j", "X"]
        );
    }
}
