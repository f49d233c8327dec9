//! `iptables [-t T] -L [chain] [-n] [-v] [-x] [--line-numbers]`, the listing most people paste
//! in issues, into the same rule model as `iptables-save`: chains with policy or reference
//! count, and per rule the target (or `[goto]`), protocol, interfaces, addresses and the
//! matches the checks read (`/* comment */`, `match-set`, `dpt:`/`dports`, `mark match`),
//! rewritten as the `iptables-save` options they print.
//!
//! A listing is always a [`Fragment`]: chains are printed whole only up to the blank line that
//! ends their block, and what scrolled out of the paste is unknown. Columns cut off on the
//! right are read as far as they go.

use std::collections::BTreeMap;

use super::{
    iptables_fragment::table_mut,
    iptables_table_inference::{self as inference, UNKNOWN},
};
use crate::observed::iptables::{self, Backend, Fragment, IptChain, IptRule, IptablesDump};

#[derive(Default)]
struct Block {
    chain: IptChain,
    references: Option<u64>,
    rules: Vec<IptRule>,
    /// Ended by a blank line or the next `Chain` header, not by the end of the text.
    ended: bool,
    /// A `dpt:ssh`-style port name this reader cannot turn into a number: the chain's ports
    /// are not all known.
    named_ports: bool,
}

/// The columns of `-L`'s table, from its header line.
#[derive(Clone, Copy, Default)]
struct Columns {
    num: bool,
    verbose: bool,
}

/// Parses a listing. `table` is what the command named (`-t nat`; `-L` alone lists filter);
/// `ended` says the command's output ended where the text does (the next prompt followed), so
/// that its last chain is whole too.
pub fn parse(
    text: &str,
    backend: Option<Backend>,
    family: u8,
    table: Option<&str>,
    ended: bool,
) -> IptablesDump {
    let mut errors = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut cols = Columns::default();
    let mut orphans = 0;
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_end();
        if line.trim().is_empty() {
            if let Some(b) = blocks.last_mut() {
                b.ended = true;
            }
            continue;
        }
        if let Some(block) = header(line) {
            if let Some(b) = blocks.last_mut() {
                b.ended = true;
            }
            blocks.push(block);
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.contains(&"target") && words.contains(&"prot") {
            cols = Columns {
                num: words.first() == Some(&"num"),
                verbose: words.contains(&"pkts"),
            };
            continue;
        }
        // `# Warning: iptables-legacy tables present, use iptables-legacy to see them`.
        if line.trim_start().starts_with('#') {
            continue;
        }
        let Some(block) = blocks.last_mut().filter(|b| !b.ended) else {
            // Rows above the first header (the paste began mid-chain): their chain is unknown.
            orphans += 1;
            continue;
        };
        match row(line, cols, &block.chain.name) {
            Ok((rule, named)) => {
                block.named_ports |= named;
                block.rules.push(rule);
            }
            Err(e) => errors.push(format!("line {lineno}: {e}: {}", line.trim())),
        }
    }
    if ended && let Some(b) = blocks.last_mut() {
        b.ended = true;
    }
    if orphans > 0 {
        errors.push(format!(
            "line 1: {orphans} rule row(s) before the first `Chain` header: their chain is unknown, not read"
        ));
    }
    assemble(blocks, backend, family, table, errors)
}

fn assemble(
    blocks: Vec<Block>,
    backend: Option<Backend>,
    family: u8,
    table: Option<&str>,
    errors: Vec<String>,
) -> IptablesDump {
    let names: Vec<String> = blocks.iter().map(|b| b.chain.name.clone()).collect();
    let all_rules: Vec<IptRule> = blocks.iter().flat_map(|b| b.rules.clone()).collect();
    let inferred = if table.is_some() {
        BTreeMap::new()
    } else {
        inference::assign(&names, &all_rules)
    };
    let table_of = |chain: &str| -> String {
        table
            .map(str::to_string)
            .or_else(|| inferred.get(chain).map(|(t, _)| t.clone()))
            .unwrap_or_else(|| UNKNOWN.to_string())
    };
    let mut fragment = Fragment {
        form: "iptables -L listing".into(),
        ..Default::default()
    };
    let mut tables = Vec::new();
    for b in blocks {
        let t = table_of(&b.chain.name);
        let key = format!("{t} {}", b.chain.name);
        if b.ended && !b.named_ports {
            fragment.complete_chains.push(key.clone());
        }
        if b.references == Some(0) {
            fragment.unreferenced.push(key);
        }
        let into = table_mut(&mut tables, &t);
        if into.chain(&b.chain.name).is_none() {
            into.chains.push(b.chain);
        }
        into.rules.extend(b.rules);
    }
    let mut reasons: BTreeMap<String, String> =
        inference::reasons_by_table(&inferred).into_iter().collect();
    if let Some(t) = table {
        reasons.insert(t.to_string(), "named by the command".to_string());
    }
    fragment.tables = tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                reasons.get(&t.name).cloned().unwrap_or_default(),
            )
        })
        .collect();
    IptablesDump {
        backend,
        family,
        tables,
        errors,
        fragment: Some(fragment),
    }
}

/// `Chain cali-INPUT (1 references)`, `Chain INPUT (policy ACCEPT 0 packets, 0 bytes)`.
fn header(line: &str) -> Option<Block> {
    if !super::classify::is_listing_header(line) {
        return None;
    }
    let rest = line.trim().strip_prefix("Chain ")?;
    let (name, detail) = rest.split_once(' ')?;
    let detail = detail.trim().trim_start_matches('(').trim_end_matches(')');
    let words: Vec<&str> = detail.split_whitespace().collect();
    let mut block = Block {
        chain: IptChain {
            name: name.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    match words.as_slice() {
        ["policy", policy, rest @ ..] => {
            block.chain.policy = Some((*policy).to_string());
            if let [p, "packets,", b, ..] = rest {
                block.chain.packets = counter(p);
                block.chain.bytes = counter(b);
            }
        }
        [n, ..] => block.references = n.parse().ok(),
        [] => {}
    }
    Some(block)
}

/// `476K`, `53M`, `1001`: iptables rounds large counters (without `-x`) to a unit.
fn counter(word: &str) -> Option<u64> {
    let (digits, mult) = match word.chars().last()? {
        'K' => (&word[..word.len() - 1], 1_000),
        'M' => (&word[..word.len() - 1], 1_000_000),
        'G' => (&word[..word.len() - 1], 1_000_000_000),
        'T' => (&word[..word.len() - 1], 1_000_000_000_000),
        _ => (word, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// The `opt` column: `--` (or a fragment flag) right after the protocol.
fn is_opt(word: &str) -> bool {
    matches!(word, "--" | "-f" | "!f")
}

/// One rule row as the `iptables-save` rule it lists. Returns whether a port was printed by
/// its service name.
fn row(line: &str, cols: Columns, chain: &str) -> Result<(IptRule, bool), String> {
    let words = words_with_offsets(line);
    let mut i = 0;
    if cols.num && words.first().is_some_and(|(w, _)| w.parse::<u32>().is_ok()) {
        i += 1;
    }
    let (mut packets, mut bytes) = (None, None);
    // `-v` prints counters first; without the header line, two counters in front say so.
    let counted = cols.verbose
        || (words.len() > i + 1
            && counter(words[i].0).is_some()
            && counter(words[i + 1].0).is_some());
    if counted {
        packets = words.get(i).and_then(|(w, _)| counter(w));
        bytes = words.get(i + 1).and_then(|(w, _)| counter(w));
        i += 2;
    }
    let Some(opt) = (i..words.len()).find(|&j| is_opt(words[j].0)) else {
        // Cut before the `opt` column: only a target is left to read.
        let target = words
            .get(i)
            .map(|(w, _)| *w)
            .ok_or("row cut before its target")?;
        let mut rule = iptables::parse_rule(&format!("-A {chain} -j {target}"))?;
        (rule.packets, rule.bytes) = (packets, bytes);
        return Ok((rule, false));
    };
    // The target column is empty for a rule without one (counters only).
    let target = (opt >= i + 2).then(|| words[i].0);
    let prot = words
        .get(opt.wrapping_sub(1))
        .map(|(w, _)| *w)
        .unwrap_or("all");
    let mut j = opt + 1;
    let mut spec: Vec<String> = Vec::new();
    if !matches!(prot, "all" | "0") {
        spec.push(negatable("-p", prot));
    }
    let fields: &[&str] = if cols.verbose || counted {
        &["-i", "-o", "-s", "-d"]
    } else {
        &["-s", "-d"]
    };
    for flag in fields {
        let Some((w, _)) = words.get(j) else { break };
        j += 1;
        if !matches!(*w, "*" | "any" | "0.0.0.0/0" | "anywhere" | "::/0") {
            spec.push(negatable(flag, w));
        }
    }
    let rest = words.get(j).map_or("", |(_, off)| &line[*off..]);
    let (extra, goto, named) = matches(rest);
    spec.extend(extra);
    if let Some(t) = target {
        spec.push(format!("{} {t}", if goto { "-g" } else { "-j" }));
    }
    let mut rule = iptables::parse_rule(&format!("-A {chain} {}", spec.join(" ")))?;
    (rule.packets, rule.bytes) = (packets, bytes);
    Ok((rule, named))
}

fn negatable(flag: &str, value: &str) -> String {
    match value.strip_prefix('!') {
        Some(v) => format!("! {flag} {v}"),
        None => format!("{flag} {value}"),
    }
}

fn words_with_offsets(line: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((&line[s..i], s));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((&line[s..], s));
    }
    out
}

/// Well-known service names `-L` without `-n` prints for Felix's failsafe ports.
fn service_port(name: &str) -> Option<u16> {
    Some(match name {
        "ssh" => 22,
        "domain" => 53,
        "bootps" => 67,
        "bootpc" => 68,
        "http" => 80,
        "bgp" => 179,
        "https" => 443,
        "etcd-client" => 2379,
        "etcd-server" => 2380,
        _ => return None,
    })
}

/// The listing's match text (`/* cali:x */ match-set a src tcp dpt:22`) as `iptables-save`
/// options; words it does not know are kept as they are. Returns the options, whether the
/// rule is a goto, and whether a port name could not be turned into a number.
fn matches(rest: &str) -> (Vec<String>, bool, bool) {
    let mut out = Vec::new();
    let mut goto = false;
    let mut named = false;
    // Comments first: they may hold any word. `/ * x */` is how some pastes mangle them.
    if let Some(start) = rest.find("/*").or_else(|| rest.find("/ *")) {
        let open = if rest[start..].starts_with("/*") {
            2
        } else {
            3
        };
        if let Some(len) = rest[start + open..].find("*/") {
            let comment = rest[start + open..start + open + len].trim();
            out.push(format!(
                "-m comment --comment \"{}\"",
                comment.replace('"', "\\\"")
            ));
            let rebuilt = format!("{} {}", &rest[..start], &rest[start + open + len + 2..]);
            let (more, g, n) = matches(&rebuilt);
            out.extend(more);
            return (out, g, n);
        }
    }
    let text = rest;
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    let mut port = |flag: &str, value: &str, out: &mut Vec<String>| {
        let numeric = value.split([',', ':']).all(|p| p.parse::<u16>().is_ok());
        if numeric {
            out.push(format!("{flag} {value}"));
        } else if let Some(p) = service_port(value) {
            out.push(format!("{flag} {p}"));
        } else {
            named = true;
            out.push(format!("{flag} {value}"));
        }
    };
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).copied();
        match w {
            "[goto]" => goto = true,
            "!" if next == Some("match-set") => {
                out.push(format!(
                    "-m set ! --match-set {} {}",
                    words.get(i + 2).unwrap_or(&""),
                    words.get(i + 3).unwrap_or(&"")
                ));
                i += 4;
                continue;
            }
            "match-set" => {
                out.push(format!(
                    "-m set --match-set {} {}",
                    next.unwrap_or(""),
                    words.get(i + 2).unwrap_or(&"")
                ));
                i += 3;
                continue;
            }
            "multiport" if matches!(next, Some("dports" | "sports")) => {
                let flag = if next == Some("dports") {
                    "--dports"
                } else {
                    "--sports"
                };
                out.push("-m multiport".into());
                port(flag, words.get(i + 2).unwrap_or(&""), &mut out);
                i += 3;
                continue;
            }
            "mark" if next == Some("match") => {
                out.push(format!(
                    "-m mark --mark {}",
                    words.get(i + 2).unwrap_or(&"")
                ));
                i += 3;
                continue;
            }
            _ => {
                if let Some(p) = w.strip_prefix("dpt:").or_else(|| w.strip_prefix("dpts:")) {
                    port("--dport", p, &mut out);
                } else if let Some(p) = w.strip_prefix("spt:").or_else(|| w.strip_prefix("spts:")) {
                    port("--sport", p, &mut out);
                } else {
                    out.push(w.to_string());
                }
            }
        }
        i += 1;
    }
    (out, goto, named)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = "Chain POSTROUTING (policy ACCEPT 0 packets, 0 bytes)
 pkts bytes target     prot opt in     out     source               destination
 476K   53M cali-POSTROUTING  all  --  *      *       0.0.0.0/0            0.0.0.0/0            /* cali:O3lYWMrLQYEMJtB5 */
   29  1968 MASQUERADE  all  --  *      !docker0  172.17.0.0/16        0.0.0.0/0

Chain cali-nat-outgoing (1 references)
 pkts bytes target     prot opt in     out     source               destination
  121  7548 MASQUERADE  all  --  *      *       0.0.0.0/0            0.0.0.0/0            / * cali:Dw4T8UWPnCLxRJiI */ match-set cali40masq-ipam-pools src ! match-set cali40all-ipam-pools dst

Chain cali-failsafe-in (0 references)
 pkts bytes target     prot opt in     out     source               destination
    0     0 ACCEPT     tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            /* cali:x */ multiport dports 22
    0     0 ACCEPT     udp  --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:bootpc
    0     0            all  --  *      *       0.0.0.0/0            0.0.0.0/0            /* counts only */
";

    #[test]
    fn verbose_listing_reads_as_save_rules() {
        let d = parse(NAT, None, 4, Some("nat"), false);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let nat = d.table("nat").expect("nat");
        let hook = nat.rules_of("POSTROUTING").next().expect("hook");
        assert_eq!(hook.target.as_deref(), Some("cali-POSTROUTING"));
        assert_eq!(hook.felix_hash(), Some("O3lYWMrLQYEMJtB5"));
        assert_eq!(hook.packets, Some(476_000));
        let masq = nat.rules_of("cali-nat-outgoing").next().expect("masq");
        assert_eq!(masq.target.as_deref(), Some("MASQUERADE"));
        assert!(
            masq.spec.contains("--match-set cali40masq-ipam-pools src"),
            "{}",
            masq.spec
        );
        assert_eq!(masq.felix_hash(), Some("Dw4T8UWPnCLxRJiI"));
        let docker = nat.rules_of("POSTROUTING").nth(1).expect("docker");
        assert!(
            docker.spec.contains("! -o docker0 -s 172.17.0.0/16"),
            "{}",
            docker.spec
        );
        let fs: Vec<&IptRule> = nat.rules_of("cali-failsafe-in").collect();
        assert!(fs[0].spec.contains("--dports 22"), "{}", fs[0].spec);
        assert!(fs[1].spec.contains("--dport 68"), "{}", fs[1].spec);
        assert_eq!(fs[2].target, None);
        let f = d.fragment.as_ref().expect("fragment");
        assert!(f.is_complete("nat", "POSTROUTING"));
        assert!(f.is_complete("nat", "cali-nat-outgoing"));
        // The last block runs to the end of the text: it may have been cut.
        assert!(!f.is_complete("nat", "cali-failsafe-in"));
        assert!(f.is_unreferenced("nat", "cali-failsafe-in"));
    }

    #[test]
    fn plain_listing_with_line_numbers_and_names() {
        let text = "Chain POSTROUTING (policy ACCEPT)
num  target     prot opt source               destination
1    cali-POSTROUTING  all  --  anywhere             anywhere             /* cali:O3lYWMrLQYEMJtB5 */
2    STATIC-EGRESS-NAT-CHAIN  all  --  anywhere             anywhere
";
        let d = parse(text, None, 4, None, false);
        let f = d.fragment.as_ref().expect("fragment");
        assert_eq!(d.tables.len(), 1);
        assert_eq!(d.tables[0].name, "unknown");
        assert!(!f.tables[0].1.is_empty());
        assert_eq!(
            d.tables[0].rules[0].target.as_deref(),
            Some("cali-POSTROUTING")
        );
    }

    #[test]
    fn truncated_columns_and_orphan_rows() {
        let text = "   29  1968 MASQUERADE\nChain cali-INPUT (1 references)\n pkts bytes target     prot opt in     out\n   10   900 cali-wl-to-host  all  --  cali+\n   11   901 ACCEPT\n";
        let d = parse(text, None, 4, None, false);
        let filter = d.table("filter").expect("filter by cali-INPUT's name");
        assert_eq!(filter.rules.len(), 2);
        assert_eq!(filter.rules[0].spec, "-i cali+ -j cali-wl-to-host");
        assert_eq!(filter.rules[1].target.as_deref(), Some("ACCEPT"));
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    }
}
