//! `nft [-n] [-a] list ruleset` text into the same [`NftRuleset`] that [`nft::parse_json`] gives
//! for the JSON listing of the same ruleset.
//!
//! Tables, chains (with `type … hook … priority …; policy …;`), sets and maps with their element
//! counts, and per rule: handle (`# handle N`, with `-a`), comment, counters, verdict and jump
//! target are exact. The expression kinds (`match`, `counter`, `mangle`, `vmap`, …) are
//! recognised statement by statement, leniently; two things the text cannot show make them
//! differ from JSON for iptables-nft rules: a `-m comment` match prints nothing, and xt
//! targets are printed as their nft translation (`meta mark set …` for an xt `MARK`).
//!
//! [`nft::parse_json`]: crate::observed::nft::parse_json

use crate::observed::nft::{NftChain, NftRule, NftRuleset, NftSet, NftTable};

/// Parses the listing. Lines that cannot be placed are reported in `errors` as `line N: …`,
/// the way [`crate::observed::iptables::parse`] reports its own.
pub fn parse(text: &str) -> NftRuleset {
    let mut p = Parser::default();
    for (n, line) in text.lines().enumerate() {
        p.line(n + 1, line);
    }
    p.finish()
}

/// Parses a listing pasted without its `table … {` line (and perhaps without the `chain … {`
/// line of the rules it starts with): the table is inferred from what the text holds and
/// the result is marked as a fragment. A listing with its table line is parsed as [`parse`]
/// does.
pub fn parse_fragment(text: &str) -> NftRuleset {
    let first = text
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim())
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    if first.starts_with("table ") {
        return parse(text);
    }
    let (family, name, why) = fragment_table(text);
    let table = NftTable {
        family: family.to_string(),
        name: name.to_string(),
    };
    let mut p = Parser::default();
    p.rs.tables.push(table.clone());
    p.table = Some(table.clone());
    let first_word = first.split_whitespace().next().unwrap_or_default();
    let mut note =
        format!("nft listing without its `table` line: assigned to {family} {name} ({why})");
    if !matches!(
        first_word,
        "chain" | "set" | "map" | "}" | "flags" | "comment"
    ) {
        // It starts among a chain's rules: their chain is not known.
        p.rs.chains.push(NftChain {
            family: table.family,
            table: table.name,
            name: "unknown".into(),
            ..Default::default()
        });
        p.block = Block::Chain("unknown".into());
        note.push_str("; it begins inside a chain whose name was cut off");
    }
    for (n, line) in text.lines().enumerate() {
        p.line(n + 1, line);
    }
    let mut rs = p.finish();
    rs.fragment = Some(note);
    rs
}

/// Felix's nftables mode names its chains `filter-cali-…`, `nat-cali-…` in `ip calico`;
/// iptables-nft's tables are named for their base chains' type and priority.
fn fragment_table(text: &str) -> (&'static str, &'static str, String) {
    let mut hook_table = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["chain", name, "{", ..] = words.as_slice() {
            let felix = ["filter-", "nat-", "raw-", "mangle-"]
                .iter()
                .any(|p| name.starts_with(p));
            if felix {
                return (
                    "ip",
                    "calico",
                    format!("chain {name} is named as Felix's nftables mode names them"),
                );
            }
        }
        if words.first() == Some(&"type") && hook_table.is_none() {
            let prio = words
                .iter()
                .position(|w| *w == "priority")
                .and_then(|i| words.get(i + 1))
                .map(|w| w.trim_end_matches(';'));
            let table = match (words.get(1).copied(), prio) {
                (_, Some("raw")) => Some("raw"),
                (_, Some("mangle")) => Some("mangle"),
                (Some("nat"), _) | (_, Some("dstnat" | "srcnat")) => Some("nat"),
                (Some("filter"), _) => Some("filter"),
                _ => None,
            };
            hook_table = table.map(|t| (t, line.trim().to_string()));
        }
    }
    match hook_table {
        Some((t, line)) => ("ip", t, format!("its base chain says `{line}`")),
        None => ("ip", "unknown", "nothing in it names its table".into()),
    }
}

#[derive(Default)]
struct Parser {
    rs: NftRuleset,
    table: Option<NftTable>,
    block: Block,
    /// An `elements = { …` list that continues on the following lines.
    elements: Option<Elements>,
}

#[derive(Default)]
enum Block {
    #[default]
    None,
    Chain(String),
    /// Index into `rs.sets`.
    Set(usize),
    /// A block this model does not keep (flowtable, named counter, ct helper, …), with its
    /// brace depth.
    Skipped(usize),
}

struct Elements {
    set: usize,
    text: String,
    depth: i32,
}

impl Parser {
    fn error(&mut self, lineno: usize, msg: impl std::fmt::Display) {
        self.rs.errors.push(format!("line {lineno}: {msg}"));
    }

    fn line(&mut self, lineno: usize, raw: &str) {
        if let Some(el) = self.elements.as_mut() {
            el.depth += brace_balance(raw);
            el.text.push(' ');
            el.text.push_str(raw.trim());
            if el.depth <= 0 {
                self.close_elements();
            }
            return;
        }
        let (toks, comment) = tokenize(raw);
        let handle = comment
            .as_deref()
            .and_then(|c| c.trim().strip_prefix("handle "))
            .and_then(|h| h.trim().parse().ok());
        let Some(first) = toks.first() else {
            // Blank lines, and `# Warning: table ip nat is managed by iptables-nft` that nft
            // prints on stderr and `calicoctl node diags` captures with the listing.
            return;
        };
        let first = first.word().unwrap_or_default().to_string();
        if let Block::Skipped(depth) = &mut self.block {
            let balance = brace_balance(raw);
            *depth = depth.saturating_add_signed(balance as isize);
            if *depth == 0 {
                self.block = Block::None;
            }
            return;
        }
        if first == "}" {
            self.close(lineno);
            return;
        }
        match (&self.block, self.table.is_some()) {
            (_, false) => self.top_level(lineno, &toks),
            (Block::None, true) => self.table_member(lineno, &toks, raw),
            (Block::Chain(_), true) => self.chain_line(lineno, &toks, raw, handle),
            (Block::Set(idx), true) => {
                let idx = *idx;
                self.set_line(lineno, idx, &toks, raw);
            }
            (Block::Skipped(_), true) => {}
        }
    }

    fn top_level(&mut self, lineno: usize, toks: &[Tok]) {
        let words: Vec<&str> = toks.iter().filter_map(Tok::word).collect();
        match words.as_slice() {
            ["table", family, name, "{", ..] => self.open_table(family, name),
            // The family defaults to `ip` when it is left out.
            ["table", name, "{", ..] => self.open_table("ip", name),
            _ => self.error(lineno, "expected `table <family> <name> {`"),
        }
    }

    fn open_table(&mut self, family: &str, name: &str) {
        let t = NftTable {
            family: family.to_string(),
            name: name.to_string(),
        };
        self.rs.tables.push(t.clone());
        self.table = Some(t);
    }

    fn table_member(&mut self, lineno: usize, toks: &[Tok], raw: &str) {
        let Some(table) = self.table.clone() else {
            return;
        };
        let words: Vec<&str> = toks.iter().filter_map(Tok::word).collect();
        let name = toks.get(1).map(|t| t.text.clone()).unwrap_or_default();
        match words.first().copied() {
            Some("chain") if words.last() == Some(&"{") => {
                self.rs.chains.push(NftChain {
                    family: table.family,
                    table: table.name,
                    name: name.clone(),
                    ..Default::default()
                });
                self.block = Block::Chain(name);
            }
            Some(kind @ ("set" | "map")) if words.last() == Some(&"{") => {
                self.rs.sets.push(NftSet {
                    family: table.family,
                    table: table.name,
                    name,
                    is_map: kind == "map",
                    ..Default::default()
                });
                self.block = Block::Set(self.rs.sets.len() - 1);
            }
            // Table flags and comment.
            Some("flags" | "comment") => {}
            Some(_) if brace_balance(raw) > 0 => {
                // flowtable, counter, quota, ct helper/timeout/expectation, limit, secmark,
                // synproxy: objects verification does not need.
                self.block = Block::Skipped(1);
            }
            _ => self.error(lineno, "expected a chain, set or map"),
        }
    }

    fn chain_line(&mut self, lineno: usize, toks: &[Tok], raw: &str, handle: Option<u64>) {
        let Block::Chain(chain) = &self.block else {
            return;
        };
        let chain = chain.clone();
        match toks.first().and_then(Tok::word) {
            Some("type" | "policy") => self.base_chain(lineno, &chain, raw),
            // A chain's own comment and a netdev chain's device list.
            Some("comment" | "devices") => {}
            _ => {
                let Some(table) = self.table.clone() else {
                    return;
                };
                let mut rule = NftRule {
                    family: table.family,
                    table: table.name,
                    chain,
                    handle,
                    ..Default::default()
                };
                let understood = read_statements(toks, &mut rule);
                rule.dports = dports(toks);
                if rule.exprs.is_empty() && !understood {
                    self.error(lineno, "rule not understood");
                }
                self.rs.rules.push(rule);
            }
        }
    }

    /// `type filter hook input priority filter; policy accept;`
    fn base_chain(&mut self, lineno: usize, chain: &str, raw: &str) {
        let family = self
            .table
            .as_ref()
            .map(|t| t.family.clone())
            .unwrap_or_default();
        let text = raw.split(" #").next().unwrap_or_default();
        let mut kind = None;
        let mut hook = None;
        let mut priority = None;
        let mut policy = None;
        for statement in text.split(';') {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let mut i = 0;
            while i < words.len() {
                match words[i] {
                    "type" => kind = words.get(i + 1).map(|s| (*s).to_string()),
                    "hook" => hook = words.get(i + 1).map(|s| (*s).to_string()),
                    "policy" => policy = words.get(i + 1).map(|s| (*s).to_string()),
                    "priority" => {
                        priority = priority_value(&family, &words[i + 1..]);
                        if priority.is_none() {
                            self.error(lineno, format!("bad priority in `{}`", statement.trim()));
                        }
                        break;
                    }
                    _ => {
                        i += 1;
                        continue;
                    }
                }
                i += 2;
            }
        }
        if let Some(c) = self.rs.chains.iter_mut().rev().find(|c| c.name == chain) {
            c.kind = kind.or(c.kind.take());
            c.hook = hook.or(c.hook.take());
            c.priority = priority.or(c.priority);
            c.policy = policy.or(c.policy.take());
        }
    }

    fn set_line(&mut self, lineno: usize, idx: usize, toks: &[Tok], raw: &str) {
        let words: Vec<&str> = toks.iter().map(|t| t.text.as_str()).collect();
        let Some(set) = self.rs.sets.get_mut(idx) else {
            return;
        };
        match words.first().copied() {
            // `type ipv4_addr . inet_service`, or for a map `type ifname : verdict`, whose key
            // type is what JSON's `type` holds. JSON resolves `typeof ip saddr` to a data
            // type; the text only has the expression, which is kept instead.
            Some("type" | "typeof") => {
                let key: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .take_while(|w| *w != ":")
                    .collect();
                set.set_type = key.join(" ");
            }
            Some("elements") => {
                let Some(open) = raw.find('{') else {
                    self.error(lineno, "elements without `{`");
                    return;
                };
                let body = &raw[open..];
                self.elements = Some(Elements {
                    set: idx,
                    text: body.to_string(),
                    depth: brace_balance(body),
                });
                if self.elements.as_ref().is_some_and(|e| e.depth <= 0) {
                    self.close_elements();
                }
            }
            // flags, timeout, size, policy, counter, auto-merge, gc-interval, comment.
            _ => {}
        }
    }

    fn close_elements(&mut self) {
        if let Some(el) = self.elements.take()
            && let Some(set) = self.rs.sets.get_mut(el.set)
        {
            set.elements = count_elements(&el.text);
        }
    }

    fn close(&mut self, lineno: usize) {
        if !matches!(self.block, Block::None) {
            self.block = Block::None;
        } else if self.table.take().is_none() {
            self.error(lineno, "`}` without an open block");
        }
    }

    fn finish(mut self) -> NftRuleset {
        if self.elements.is_some() {
            self.close_elements();
            self.rs
                .errors
                .push("element list not closed (truncated listing?)".into());
        }
        if let Some(t) = self.table.take() {
            self.rs.errors.push(format!(
                "table {} {} not closed (truncated listing?)",
                t.family, t.name
            ));
        }
        self.rs
    }
}

/// Standard priority names (`nft(8)`, "PRIORITY"): the bridge family has its own values.
fn priority_value(family: &str, words: &[&str]) -> Option<i64> {
    let base = *words.first()?;
    let base: i64 = match (family, base) {
        (_, n) if n.parse::<i64>().is_ok() => n.parse().ok()?,
        ("bridge", "dstnat") => -300,
        ("bridge", "filter") => -200,
        ("bridge", "out") => 100,
        ("bridge", "srcnat") => 300,
        (_, "raw") => -300,
        (_, "mangle") => -150,
        (_, "dstnat") => -100,
        (_, "filter") => 0,
        (_, "security") => 50,
        (_, "srcnat") => 100,
        _ => return None,
    };
    match words.get(1..3) {
        Some(["+", n]) => base.checked_add(n.parse().ok()?),
        Some(["-", n]) => base.checked_sub(n.parse().ok()?),
        _ => Some(base),
    }
}

/// Opening minus closing braces outside quoted strings.
fn brace_balance(text: &str) -> i32 {
    let mut depth = 0;
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Elements of `{ a, b . c, "x" : jump y }`: top-level commas separate them.
fn count_elements(text: &str) -> usize {
    let inner = text.trim();
    let inner = inner.strip_prefix('{').unwrap_or(inner);
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let mut count = 0;
    let mut current = false;
    let mut depth = 0;
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current = true;
            }
            '{' | '(' | '[' if !quoted => {
                depth += 1;
                current = true;
            }
            '}' | ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                if current {
                    count += 1;
                }
                current = false;
            }
            c if !c.is_whitespace() => current = true,
            _ => {}
        }
    }
    count + usize::from(current)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tok {
    text: String,
    quoted: bool,
}

impl Tok {
    /// The token as a keyword: quoted strings never are one.
    fn word(&self) -> Option<&str> {
        (!self.quoted).then_some(self.text.as_str())
    }
}

/// Splits a line into words, keeping `"quoted strings"` whole; an unquoted `#` starts a comment
/// (nft's `# handle N`), returned separately.
fn tokenize(line: &str) -> (Vec<Tok>, Option<String>) {
    let mut toks = Vec::new();
    let mut cur = String::new();
    let mut in_tok = false;
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = line.char_indices();
    while let Some((pos, c)) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some((_, n)) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
                in_tok = true;
            }
            '#' if !quoted && !in_tok => {
                return (toks, Some(line[pos + 1..].to_string()));
            }
            c if c.is_whitespace() && !quoted => {
                if in_tok {
                    toks.push(Tok {
                        text: std::mem::take(&mut cur),
                        quoted: was_quoted,
                    });
                    in_tok = false;
                    was_quoted = false;
                }
            }
            c => {
                cur.push(c);
                in_tok = true;
            }
        }
    }
    if in_tok {
        toks.push(Tok {
            text: cur,
            quoted: was_quoted,
        });
    }
    (toks, None)
}

/// Meta keys nft prints without `meta` in front (`iifname "cali*"`, `mark set …`).
const UNQUALIFIED_META: &[&str] = &[
    "iif",
    "oif",
    "iifname",
    "oifname",
    "iiftype",
    "oiftype",
    "mark",
    "skuid",
    "skgid",
    "rtclassid",
    "pkttype",
    "cpu",
    "iifgroup",
    "oifgroup",
    "cgroup",
    "nftrace",
    "ibrname",
    "obrname",
    "ibrpvid",
    "ibrvproto",
    "sdif",
    "sdifname",
];

/// Payload protocols: `<proto> <field>` selects a header field.
const PAYLOAD: &[&str] = &[
    "ip", "ip6", "tcp", "udp", "udplite", "sctp", "dccp", "icmp", "icmpv6", "igmp", "ether",
    "vlan", "arp", "th", "ah", "esp", "comp", "hbh", "frag", "dst", "mh", "srh", "rt0", "rt2",
    "rt4", "gre", "gretap", "geneve", "vxlan", "exthdr",
];

const BINOPS: &[&str] = &[
    "&", "|", "^", "<<", ">>", "and", "or", "xor", "lshift", "rshift",
];
const RELOPS: &[&str] = &[
    "==", "!=", "<", ">", "<=", ">=", "eq", "ne", "lt", "gt", "le", "ge",
];

fn is_selector(word: &str) -> bool {
    word.starts_with('@')
        || UNQUALIFIED_META.contains(&word)
        || PAYLOAD.contains(&word)
        || matches!(
            word,
            "meta"
                | "ct"
                | "fib"
                | "numgen"
                | "jhash"
                | "symhash"
                | "socket"
                | "osf"
                | "rt"
                | "ipsec"
        )
}

/// Reads a rule's statements into `rule` (verdict, target, counters, comment, expression
/// kinds). Returns false if a word could not be placed in any statement.
fn read_statements(toks: &[Tok], rule: &mut NftRule) -> bool {
    let mut s = Statements { toks, i: 0 };
    let mut understood = true;
    while let Some(tok) = toks.get(s.i) {
        let Some(word) = tok.word() else {
            // A string where a statement should start.
            understood = false;
            s.i += 1;
            continue;
        };
        match word {
            "counter" => {
                rule.exprs.push("counter".into());
                s.i += 1;
                if s.word(0) == Some("packets") && s.word(2) == Some("bytes") {
                    rule.packets = s.word(1).and_then(|p| p.parse().ok());
                    rule.bytes = s.word(3).and_then(|b| b.parse().ok());
                    s.i += 4;
                } else if s.word(0) == Some("name") {
                    s.i += 2;
                }
            }
            "accept" | "drop" | "continue" | "return" => {
                rule.exprs.push(word.into());
                rule.verdict = Some(word.into());
                s.i += 1;
            }
            "reject" => {
                rule.exprs.push(word.into());
                rule.verdict = Some(word.into());
                s.i += 1;
                if s.word(0) == Some("with") {
                    // `with icmp type port-unreachable`, `with tcp reset`.
                    s.i += if s.word(2) == Some("type") { 4 } else { 3 };
                }
            }
            "jump" | "goto" => {
                let target = s.toks.get(s.i + 1).map(|t| t.text.clone());
                rule.exprs.push(word.into());
                rule.verdict = Some(format!("{word} {}", target.as_deref().unwrap_or("?")));
                rule.target = target;
                s.i += 2;
            }
            "comment" => {
                rule.comment = s.toks.get(s.i + 1).map(|t| t.text.clone());
                s.i += 2;
            }
            "log" => {
                rule.exprs.push(word.into());
                s.i += 1;
                s.skip_options(&[
                    "prefix",
                    "level",
                    "group",
                    "snaplen",
                    "queue-threshold",
                    "flags",
                ]);
            }
            "limit" => {
                rule.exprs.push(word.into());
                s.i += 1;
                s.skip_limit();
            }
            "masquerade" | "redirect" | "snat" | "dnat" => {
                rule.exprs.push(word.into());
                s.i += 1;
                s.skip_nat_options();
            }
            "notrack" | "tproxy" | "synproxy" | "dup" | "fwd" | "quota" | "queue" => {
                rule.exprs.push(word.into());
                s.i += 1;
                s.skip_options(&["to", "device", "num", "flags", "over", "until", "used"]);
            }
            "xt" => {
                // `xt match set`, `xt target MARK`: iptables-nft extensions nft cannot translate.
                rule.exprs.push(word.into());
                s.i += 3;
            }
            "add" | "update" | "delete" if s.word(1).is_some_and(|w| w.starts_with('@')) => {
                rule.exprs.push("set".into());
                s.i += 2;
                s.term();
            }
            w if is_selector(w) => {
                s.selector();
                match s.word(0) {
                    Some("set") => {
                        rule.exprs.push("mangle".into());
                        s.i += 1;
                        s.value_expr();
                    }
                    Some("vmap") => {
                        rule.exprs.push("vmap".into());
                        rule.verdict = Some("vmap".into());
                        s.i += 1;
                        s.term();
                    }
                    _ => {
                        rule.exprs.push("match".into());
                        if s.word(0).is_some_and(|w| RELOPS.contains(&w)) {
                            s.i += 1;
                        }
                        s.term();
                    }
                }
            }
            _ => {
                understood = false;
                s.i += 1;
            }
        }
    }
    understood
}

/// `tcp dport 22`, `udp dport { 53, 67 }` (equality only, as `nft::parse_json` reads them).
fn dports(toks: &[Tok]) -> Vec<(String, u16)> {
    let words: Vec<&str> = toks.iter().map(|t| t.word().unwrap_or("")).collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if !matches!(*w, "tcp" | "udp" | "sctp" | "dccp" | "udplite")
            || words.get(i + 1) != Some(&"dport")
        {
            continue;
        }
        let mut j = i + 2;
        if matches!(words.get(j), Some(&("==" | "eq"))) {
            j += 1;
        }
        let number = |t: &str| {
            t.trim_matches(|c| c == ',' || c == '{' || c == '}')
                .parse::<u16>()
                .ok()
        };
        match words.get(j) {
            Some(&"{") => {
                for t in words.iter().skip(j + 1).take_while(|t| **t != "}") {
                    out.extend(number(t).map(|p| ((*w).to_string(), p)));
                }
            }
            Some(t) => out.extend(number(t).map(|p| ((*w).to_string(), p))),
            None => {}
        }
    }
    out
}

/// A cursor over a rule's tokens.
struct Statements<'a> {
    toks: &'a [Tok],
    i: usize,
}

impl<'a> Statements<'a> {
    fn word(&self, ahead: usize) -> Option<&'a str> {
        let toks: &'a [Tok] = self.toks;
        toks.get(self.i + ahead).and_then(Tok::word)
    }

    /// A selector (`meta mark`, `ip saddr`, `fib saddr . oif type`, `iifname`, `@nh,16,8`),
    /// with concatenations (`ip saddr . tcp dport`) and bitwise operations (`meta mark & 0x10`).
    fn selector(&mut self) {
        let Some(word) = self.word(0) else { return };
        self.i += match word {
            w if w.starts_with('@') => 1,
            w if UNQUALIFIED_META.contains(&w) => 1,
            "meta" => 2,
            "ct" if matches!(self.word(1), Some("original" | "reply")) => 3,
            "ct" => 2,
            "fib" => {
                self.i += 2;
                while self.word(0) == Some(".") {
                    self.i += 2;
                }
                1
            }
            "numgen" => 4,
            "symhash" => 3,
            "jhash" => {
                self.i += 1;
                self.selector();
                // `mod N [seed N] [offset N]`
                2
            }
            "socket" | "osf" => 2,
            "rt" if matches!(self.word(1), Some("ip" | "ip6")) => 3,
            "rt" | "ipsec" => 2,
            "tcp" if self.word(1) == Some("option") => 4,
            _ => 2,
        };
        self.skip_options(&["seed", "offset"]);
        loop {
            match self.word(0) {
                Some(".") => {
                    self.i += 1;
                    self.selector();
                }
                Some(op) if BINOPS.contains(&op) => {
                    self.i += 1;
                    self.operand();
                }
                _ => break,
            }
        }
    }

    fn operand(&mut self) {
        match self.word(0) {
            Some(w) if is_selector(w) => self.selector(),
            _ => self.term(),
        }
    }

    /// The value of a `set` statement: operands joined by bitwise operators.
    fn value_expr(&mut self) {
        self.operand();
        while self.word(0).is_some_and(|w| BINOPS.contains(&w)) {
            self.i += 1;
            self.operand();
        }
    }

    /// A literal, `@set`, or `{ anonymous, set }`, with concatenations and `/ mask`.
    fn term(&mut self) {
        match self.toks.get(self.i) {
            Some(t) if !t.quoted && t.text.starts_with('{') => {
                let mut depth = 0;
                while let Some(t) = self.toks.get(self.i) {
                    depth += brace_balance(&t.text);
                    self.i += 1;
                    if depth <= 0 {
                        break;
                    }
                }
            }
            Some(_) => self.i += 1,
            None => return,
        }
        while matches!(self.word(0), Some("." | "/")) {
            self.i += 1;
            self.term();
        }
    }

    /// Skips `name value` pairs whose names are in `names`.
    fn skip_options(&mut self, names: &[&str]) {
        while self.word(0).is_some_and(|w| names.contains(&w)) {
            self.i += 2;
        }
    }

    /// `rate [over] 10/second [burst 5 packets]`.
    fn skip_limit(&mut self) {
        if self.word(0) == Some("rate") {
            self.i += 1;
        }
        if self.word(0) == Some("over") {
            self.i += 1;
        }
        self.i += 1;
        if self.word(0).is_some_and(|w| w.contains('/')) {
            self.i += 1;
        }
        if self.word(0) == Some("burst") {
            self.i += 2;
            if matches!(
                self.word(0),
                Some("packets" | "bytes" | "kbytes" | "mbytes")
            ) {
                self.i += 1;
            }
        }
    }

    /// `[ip|ip6] to ADDR[:PORT] [map { … }] [random] [fully-random] [persistent]`.
    fn skip_nat_options(&mut self) {
        loop {
            match self.word(0) {
                Some("ip" | "ip6") if self.word(1) == Some("to") => self.i += 1,
                Some("to") => {
                    self.i += 1;
                    self.operand();
                    if self.word(0) == Some("map") {
                        self.i += 1;
                        self.term();
                    }
                }
                Some(w)
                    if w.split(',')
                        .all(|f| matches!(f, "random" | "fully-random" | "persistent")) =>
                {
                    self.i += 1
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::nft::parse_json;

    const CALICO_JSON: &str = include_str!("../testdata/nft-calico.json");
    const CALICO_TEXT: &str = include_str!("testdata/nft-calico.txt");
    const CALICO_NUMERIC: &str = include_str!("testdata/nft-calico-n-a.txt");
    const IPT_NFT_JSON: &str = include_str!("testdata/nft-iptables-nft.json");
    const IPT_NFT_TEXT: &str = include_str!("testdata/nft-iptables-nft-a.txt");

    fn without_handles(mut rs: NftRuleset) -> NftRuleset {
        for r in &mut rs.rules {
            r.handle = None;
        }
        rs
    }

    #[test]
    fn calico_nft_mode_text_equals_its_json() {
        let json = parse_json(CALICO_JSON).expect("fixture is valid JSON");
        let numeric = parse(CALICO_NUMERIC);
        assert_eq!(numeric, json, "nft -n -a list ruleset");
        // Without -a there are no handles; everything else is the same.
        assert_eq!(parse(CALICO_TEXT), without_handles(json));
        insta::assert_yaml_snapshot!(numeric);
    }

    #[test]
    fn iptables_nft_tables_match_json_except_hidden_expressions() {
        let json = parse_json(IPT_NFT_JSON).expect("fixture is valid JSON");
        let text = parse(IPT_NFT_TEXT);
        assert!(text.errors.is_empty(), "{:?}", text.errors);
        assert_eq!(text.tables, json.tables);
        assert_eq!(text.chains, json.chains);
        assert_eq!(text.sets, json.sets);
        assert_eq!(text.rules.len(), json.rules.len());
        for (t, j) in text.rules.iter().zip(&json.rules) {
            // xt matches (`-m multiport --dports`) are opaque in JSON but printed as nft text.
            let strip = |r: &NftRule| NftRule {
                exprs: Vec::new(),
                dports: Vec::new(),
                ..r.clone()
            };
            assert_eq!(strip(t), strip(j));
        }
        // What the text shows of each rule, the part that differs from JSON included.
        let shown: Vec<String> = text
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{}#{}: {} -> {}",
                    r.chain,
                    r.handle.unwrap_or_default(),
                    r.exprs.join(" "),
                    r.verdict.as_deref().unwrap_or("-")
                )
            })
            .collect();
        insta::assert_yaml_snapshot!(shown);
    }

    #[test]
    fn assorted_statements_equal_their_json() {
        // Anonymous sets, concatenations, bitwise matches, log/limit, reject, vmap, nat
        // statements, named counters and a counter object, listed by nft 1.0.6.
        let json = parse_json(include_str!("testdata/nft-shapes.json")).expect("valid JSON");
        let text = parse(include_str!("testdata/nft-shapes-a.txt"));
        assert_eq!(text, json);
    }

    #[test]
    fn priorities_by_name_and_family() {
        assert_eq!(priority_value("ip", &["srcnat", "+", "10"]), Some(110));
        assert_eq!(priority_value("inet", &["raw"]), Some(-300));
        assert_eq!(priority_value("ip", &["mangle", "-", "5"]), Some(-155));
        assert_eq!(priority_value("bridge", &["filter"]), Some(-200));
        assert_eq!(priority_value("ip", &["-300"]), Some(-300));
        assert_eq!(priority_value("ip", &["bogus"]), None);
        assert_eq!(
            priority_value("ip", &["-9223372036854775808", "-", "1"]),
            None
        );
    }

    #[test]
    fn multi_line_element_lists_and_skipped_objects() {
        let text = r#"table inet t {
	flowtable ft {
		hook ingress priority filter
		devices = { eth0 }
	}
	set s {
		type ipv4_addr . inet_service
		elements = { 10.0.0.1 . 80, 10.0.0.2 . 443,
			     10.0.0.3 . 22 }
	}
	map m {
		type ifname : verdict
		elements = { "a" : jump x, "b,c" : goto y }
	}
	chain c {
		type filter hook input priority filter + 5; policy drop;
		tcp dport { 22, 80 } ct state new log prefix "in: " limit rate 10/second burst 5 packets counter packets 1 bytes 60 accept
		ip saddr . tcp dport @s reject with icmp type port-unreachable
		meta mark set 0x1 dnat ip to 10.0.0.1:80
	}
}
"#;
        let rs = parse(text);
        assert!(rs.errors.is_empty(), "{:?}", rs.errors);
        insta::assert_yaml_snapshot!(rs);
    }

    #[test]
    fn truncated_and_garbage_listings() {
        let text = "garbage before\ntable ip calico {\n\tchain c {\n\t\ttype filter hook input priority nonsense; policy accept;\n\t\t\"just a string\"\n\t\tcounter packets 1 bytes 2 jump d\n\t}\n\tbogus member\n\tset s {\n\t\telements = { 1, 2,\n";
        let rs = parse(text);
        assert_eq!(rs.rules.len(), 2);
        assert_eq!(rs.rules[1].target.as_deref(), Some("d"));
        assert_eq!(rs.sets[0].elements, 2);
        insta::assert_yaml_snapshot!(rs.errors);
        // A stray closing brace is reported, not fatal.
        assert_eq!(parse("}\n").errors, ["line 1: `}` without an open block"]);
    }
}
