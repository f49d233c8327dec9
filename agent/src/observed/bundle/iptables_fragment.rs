//! Parts of an `iptables-save` (or `iptables -S`) as people paste them: `-A cali-…` lines
//! without their `*table` header or `COMMIT`, often with `[packets:bytes]` in front, often cut
//! mid-ruleset; or a dump that starts or stops part-way.
//!
//! The result is an [`IptablesDump`] marked as a [`Fragment`]: its rules are evidence of what
//! is present; a chain counts as printed whole only when the text shows where it starts and
//! ends (iptables-save prints each chain's rules together, so another chain's rules before
//! and after it bound it).

use std::collections::BTreeMap;

use super::iptables_table_inference::{self as inference, UNKNOWN};
use crate::observed::iptables::{
    self, Backend, Fragment, IptChain, IptRule, IptTable, IptablesDump,
};

/// Whether `text` is less than whole `iptables-save` output: a rule or chain line outside a
/// `*table` … `COMMIT` block, or a block never closed.
pub fn is_partial(text: &str) -> bool {
    let mut open = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('*') {
            open = true;
        } else if line == "COMMIT" {
            open = false;
        } else if !open {
            return true;
        }
    }
    open
}

/// A run of lines with nothing missing in between.
#[derive(Default)]
struct Segment {
    /// Began at `*table` or at `iptables -S`'s `-P` lines: its first chain starts here.
    starts_at_top: bool,
    /// Ended at `COMMIT`: its last chain ends here.
    committed: bool,
    table: Option<String>,
    /// Chains in the order their rules appear.
    order: Vec<String>,
    declared: Vec<IptChain>,
    rules: Vec<IptRule>,
}

/// Parses the fragment. `table` is what the command named (`iptables -t nat -S`); without it
/// each chain's table is inferred ([`inference`]).
pub fn parse(
    text: &str,
    backend: Option<Backend>,
    family: u8,
    table: Option<&str>,
) -> IptablesDump {
    parse_ended(text, backend, family, table, false)
}

/// [`parse`], knowing whether the command's output ended where the text does (the next prompt
/// followed it): then its last chain is whole too.
pub fn parse_ended(
    text: &str,
    backend: Option<Backend>,
    family: u8,
    table: Option<&str>,
    ended: bool,
) -> IptablesDump {
    let mut errors = Vec::new();
    let mut segments: Vec<Segment> = vec![Segment::default()];
    let mut saw_header = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 1;
        let Some(seg) = segments.last_mut() else {
            continue;
        };
        if let Some(name) = line.strip_prefix('*') {
            saw_header = true;
            segments.push(Segment {
                starts_at_top: true,
                table: Some(name.trim().to_string()),
                ..Default::default()
            });
            continue;
        }
        if line == "COMMIT" {
            seg.committed = true;
            segments.push(Segment::default());
            continue;
        }
        if let Some(rest) = line.strip_prefix(':') {
            match iptables::parse_chain(rest) {
                Ok(c) => seg.declared.push(c),
                Err(e) => errors.push(format!("line {lineno}: {e}: {line}")),
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("-N ") {
            seg.declared.push(IptChain {
                name: rest.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        if let Some(rest) = line.strip_prefix("-P ") {
            // `iptables -S` starts with the built-in chains' policies: the top of a table.
            if seg.rules.is_empty() {
                seg.starts_at_top = true;
            }
            let mut w = rest.split_whitespace();
            seg.declared.push(IptChain {
                name: w.next().unwrap_or_default().to_string(),
                policy: w.next().map(str::to_string),
                ..Default::default()
            });
            continue;
        }
        match iptables::parse_rule(line) {
            Ok(rule) => {
                if seg.order.last() != Some(&rule.chain) {
                    seg.order.push(rule.chain.clone());
                }
                seg.rules.push(rule);
            }
            Err(e) => errors.push(format!("line {lineno}: {e}: {line}")),
        }
    }
    // `iptables-save` ends every table with COMMIT: one missing was cut by hand, whatever
    // followed. `iptables -S` has no terminator, so the next prompt is its end.
    if ended
        && !saw_header
        && let Some(seg) = segments.last_mut()
    {
        seg.committed = true;
    }
    let form = if saw_header {
        "iptables-save output that starts or stops part-way"
    } else {
        "rules without a *table header"
    };
    assemble(segments, backend, family, table, form, errors)
}

fn assemble(
    segments: Vec<Segment>,
    backend: Option<Backend>,
    family: u8,
    table: Option<&str>,
    form: &str,
    errors: Vec<String>,
) -> IptablesDump {
    // Chains placed by the header or the command; the others by inference over all of them.
    let mut unplaced_rules: Vec<IptRule> = Vec::new();
    let mut unplaced_chains: Vec<String> = Vec::new();
    for seg in segments
        .iter()
        .filter(|s| s.table.is_none() && table.is_none())
    {
        unplaced_rules.extend(seg.rules.iter().cloned());
        unplaced_chains.extend(seg.declared.iter().map(|c| c.name.clone()));
    }
    let inferred = inference::assign(&unplaced_chains, &unplaced_rules);
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    let table_of = |seg: &Segment, chain: &str| -> String {
        seg.table
            .clone()
            .or_else(|| table.map(str::to_string))
            .or_else(|| inferred.get(chain).map(|(t, _)| t.clone()))
            .unwrap_or_else(|| UNKNOWN.to_string())
    };
    let mut tables: Vec<IptTable> = Vec::new();
    let mut complete = Vec::new();
    for seg in &segments {
        if let Some(t) = &seg.table {
            reasons.insert(t.clone(), format!("under its `*{t}` header"));
        } else if let Some(t) = table {
            reasons.insert(t.to_string(), format!("named by the command (-t {t})"));
        }
        let last = seg.order.len().saturating_sub(1);
        for (i, chain) in seg.order.iter().enumerate() {
            if (i > 0 || seg.starts_at_top) && (i < last || seg.committed) {
                complete.push(format!("{} {chain}", table_of(seg, chain)));
            }
        }
        for c in &seg.declared {
            let name = table_of(seg, &c.name);
            if seg.starts_at_top && seg.committed && !seg.order.contains(&c.name) {
                complete.push(format!("{name} {}", c.name));
            }
            let t = table_mut(&mut tables, &name);
            if t.chain(&c.name).is_none() {
                t.chains.push(c.clone());
            }
        }
        for r in &seg.rules {
            let name = table_of(seg, &r.chain);
            let t = table_mut(&mut tables, &name);
            if t.chain(&r.chain).is_none() {
                // A chain is known from its rules even when its declaration was cut off.
                t.chains.push(IptChain {
                    name: r.chain.clone(),
                    ..Default::default()
                });
            }
            t.rules.push(r.clone());
        }
    }
    for (t, why) in inference::reasons_by_table(&inferred) {
        reasons.entry(t).or_insert(why);
    }
    complete.sort();
    complete.dedup();
    IptablesDump {
        backend,
        family,
        fragment: Some(Fragment {
            form: form.to_string(),
            tables: tables
                .iter()
                .map(|t| {
                    let why = reasons.get(&t.name).cloned().unwrap_or_default();
                    (t.name.clone(), why)
                })
                .collect(),
            complete_chains: complete,
            unreferenced: Vec::new(),
        }),
        tables,
        errors,
    }
}

pub(super) fn table_mut<'a>(tables: &'a mut Vec<IptTable>, name: &str) -> &'a mut IptTable {
    let idx = match tables.iter().position(|t| t.name == name) {
        Some(i) => i,
        None => {
            tables.push(IptTable {
                name: name.to_string(),
                ..Default::default()
            });
            tables.len() - 1
        }
    };
    &mut tables[idx]
}

/// Merges the fragments of one dump pasted into several files, in the order read. Where one
/// window ends with the lines the next begins with, the overlap is kept once; the chains
/// either shows whole stay whole.
pub fn merge(parts: Vec<IptablesDump>) -> Option<IptablesDump> {
    let mut it = parts.into_iter();
    let mut out = it.next()?;
    for part in it {
        let mut frag = out.fragment.take().unwrap_or_default();
        let other = part.fragment.clone().unwrap_or_default();
        for t in part.tables {
            let into = table_mut(&mut out.tables, &t.name);
            for c in t.chains {
                if into.chain(&c.name).is_none() {
                    into.chains.push(c);
                }
            }
            let overlap = overlap(&into.rules, &t.rules);
            into.rules.extend(t.rules.into_iter().skip(overlap));
        }
        out.errors.extend(part.errors);
        for (t, why) in other.tables {
            if !frag.tables.iter().any(|(n, _)| *n == t) {
                frag.tables.push((t, why));
            }
        }
        frag.complete_chains.extend(other.complete_chains);
        frag.complete_chains.sort();
        frag.complete_chains.dedup();
        frag.unreferenced.extend(other.unreferenced);
        frag.unreferenced.sort();
        frag.unreferenced.dedup();
        if !frag.form.contains(&other.form) {
            frag.form = format!("{} + {}", frag.form, other.form);
        }
        out.backend = out.backend.or(part.backend);
        out.fragment = Some(frag);
    }
    Some(out)
}

/// The longest run of rules that ends `a` and begins `b` (counters included: two windows of
/// one paste print the same counters).
fn overlap(a: &[IptRule], b: &[IptRule]) -> usize {
    (1..=a.len().min(b.len()))
        .rev()
        .find(|&k| a[a.len() - k..] == b[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headerless_rules_with_counters_are_placed_and_bounded() {
        let text = "[5:300] -A cali-INPUT -m comment --comment \"cali:a\" -j cali-wl-to-host\n\
                    [0:0] -A cali-OUTPUT -m comment --comment \"cali:b\" -j ACCEPT\n\
                    [0:0] -A cali-OUTPUT -o cali+ -j RETURN\n\
                    [0:0] -A cali-failsafe-in -p tcp -m multiport --dports 22 -j ACCEPT\n";
        assert!(is_partial(text));
        let d = parse(text, None, 4, None);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let f = d.fragment.as_ref().expect("fragment");
        assert_eq!(f.complete_chains, ["filter cali-OUTPUT"]);
        let filter = d.table("filter").expect("filter");
        assert_eq!(filter.rules.len(), 4);
        assert_eq!(filter.rules[0].packets, Some(5));
    }

    #[test]
    fn a_dump_cut_before_commit_keeps_its_closed_tables_whole() {
        let text = "*nat\n:POSTROUTING ACCEPT [0:0]\n:cali-nat-outgoing - [0:0]\n-A POSTROUTING -j cali-POSTROUTING\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j cali-INPUT\n-A FORWARD -j cali-FORWARD\n";
        assert!(is_partial(text));
        assert!(!is_partial("*filter\n-A INPUT -j X\nCOMMIT\n"));
        let d = parse(text, None, 4, None);
        let f = d.fragment.as_ref().expect("fragment");
        assert!(f.is_complete("nat", "POSTROUTING"));
        assert!(f.is_complete("nat", "cali-nat-outgoing"));
        assert!(f.is_complete("filter", "INPUT"));
        assert!(!f.is_complete("filter", "FORWARD"));
    }

    #[test]
    fn two_windows_of_one_paste_merge_once() {
        let a = parse(
            "-A cali-FORWARD -j cali-from-wl-dispatch\n-A cali-FORWARD -j cali-to-wl-dispatch\n",
            None,
            4,
            None,
        );
        let b = parse(
            "-A cali-FORWARD -j cali-to-wl-dispatch\n-A cali-INPUT -j ACCEPT\n",
            None,
            4,
            None,
        );
        let m = merge(vec![a, b]).expect("merged");
        assert_eq!(m.table("filter").map(|t| t.rules.len()), Some(3));
        assert!(merge(Vec::new()).is_none());
    }
}
