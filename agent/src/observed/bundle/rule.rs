//! `ip [-4|-6] rule [list]`: `99:\tnot from all fwmark 0x200000/0x200000 lookup 1`,
//! `100:\tfrom 10.0.0.0/8 to 10.1.0.0/16 iif e0 oif e1 lookup 100`, `102:\tfrom all goto 32766`.
//!
//! Values decode to what the kernel reports: a mark printed without a mask has the full mask
//! `0xffffffff`, `from all` is no source, rules without `lookup` have table 0.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    LineNote, Parsed,
    iproute_names::{parse_u32, table_number},
};
use crate::observed::model::IpRule;

/// Parses rule lines. `family` is what the command asked for (`ip -6 rule`); without it a rule
/// is IPv6 only if it names an IPv6 prefix.
pub fn parse(text: &str, family: Option<u8>) -> Parsed<IpRule> {
    let mut out = Parsed::default();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line, family) {
            Ok(rule) => out.items.push(rule),
            Err(e) => out.notes.push(LineNote::new(lineno, e)),
        }
    }
    out
}

fn parse_line(line: &str, family: Option<u8>) -> Result<IpRule, String> {
    let (prio, rest) = line
        .split_once(':')
        .ok_or("not a rule: no `priority:` prefix")?;
    let priority: u32 = prio
        .trim()
        .parse()
        .map_err(|_| format!("not a rule: bad priority {prio}"))?;
    let mut rule = IpRule {
        family: family.unwrap_or(4),
        priority,
        invert: false,
        source: None,
        destination: None,
        fwmark: None,
        fwmask: None,
        iif: None,
        oif: None,
        table: 0,
        action: String::new(),
    };
    let mut words = rest.split_whitespace();
    while let Some(word) = words.next() {
        let mut value = |what: &str| {
            words
                .next()
                .ok_or_else(|| format!("{what} without a value"))
        };
        match word {
            "not" => rule.invert = true,
            "from" => rule.source = prefix(value("from")?)?,
            "to" => rule.destination = prefix(value("to")?)?,
            "fwmark" => {
                let v = value("fwmark")?;
                let (mark, mask) = match v.split_once('/') {
                    Some((m, k)) => (m, Some(k)),
                    None => (v, None),
                };
                let mark = parse_u32(mark).ok_or_else(|| format!("bad fwmark {v}"))?;
                let mask = match mask {
                    Some(k) => parse_u32(k).ok_or_else(|| format!("bad fwmark mask {v}"))?,
                    None => u32::MAX,
                };
                // The kernel sends FRA_FWMARK only for a non-zero mark, FRA_FWMASK always.
                rule.fwmark = (mark != 0).then_some(mark);
                rule.fwmask = Some(mask);
            }
            "iif" => rule.iif = Some(value("iif")?.to_string()),
            "oif" => rule.oif = Some(value("oif")?.to_string()),
            "lookup" | "table" => {
                let t = value("lookup")?;
                rule.table = table_number(t)
                    .ok_or_else(|| format!("table {t} is not a number or a default name"))?;
                rule.action = "lookup".into();
            }
            "goto" => {
                value("goto")?;
                rule.action = "goto".into();
            }
            "blackhole" | "unreachable" | "prohibit" | "nop" => rule.action = word.into(),
            // Selectors and options the model does not keep.
            "tos"
            | "dsfield"
            | "uidrange"
            | "ipproto"
            | "sport"
            | "dport"
            | "realms"
            | "suppress_prefixlength"
            | "suppress_ifgroup"
            | "proto"
            | "protocol"
            | "pref"
            | "priority"
            | "tun_id"
            | "flowlabel"
            | "dscp"
            | "map-to"
            | "nat" => {
                value(word)?;
            }
            // `[detached]`, `[unresolved]`, `l3mdev`: flags.
            _ => {}
        }
    }
    if rule.action.is_empty() {
        return Err("rule without an action (lookup, goto, blackhole, …)".into());
    }
    if family.is_none()
        && [rule.source, rule.destination]
            .iter()
            .flatten()
            .any(|n| n.addr().is_ipv6())
    {
        rule.family = 6;
    }
    Ok(rule)
}

fn prefix(word: &str) -> Result<Option<IpNet>, String> {
    if word == "all" {
        return Ok(None);
    }
    let net = if word.contains('/') {
        word.parse().ok()
    } else {
        word.parse::<IpAddr>().ok().map(IpNet::from)
    };
    net.map(Some).ok_or_else(|| format!("bad prefix {word}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selector_and_action() {
        let parsed = parse(include_str!("testdata/ip-rule-kinds.txt"), None);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn ipv6_rules_take_the_family_of_the_command() {
        let parsed = parse(include_str!("testdata/ip-6-rule.txt"), Some(6));
        assert!(parsed.items.iter().all(|r| r.family == 6));
        let guessed = parse(include_str!("testdata/ip-6-rule.txt"), None);
        let families: Vec<u8> = guessed.items.iter().map(|r| r.family).collect();
        assert_eq!(families, [4, 6, 4]);
    }

    #[test]
    fn display_round_trips_through_the_parser() {
        let parsed = parse(include_str!("testdata/ip-rule-kinds.txt"), None);
        // A zero mark with a mask is not printed by `display`; every other rule round-trips.
        let printable =
            |r: &&IpRule| r.action == "lookup" && (r.fwmark.is_some() || r.fwmask.is_none());
        for rule in parsed.items.iter().filter(printable) {
            let again = parse(&rule.display(), None);
            assert_eq!(
                again.items,
                std::slice::from_ref(rule),
                "{}",
                rule.display()
            );
        }
    }

    #[test]
    fn garbage_and_truncated_lines() {
        let parsed = parse(
            "0:\tfrom all lookup local\nnonsense\nx:\tfrom all lookup main\n5:\tfrom all\n\
             6:\tfrom 10.0.0.300 lookup 1\n7:\tfrom all lookup custom\n8:\tfrom all fwmark",
            None,
        );
        assert_eq!(parsed.items.len(), 1);
        insta::assert_yaml_snapshot!(parsed.notes);
    }
}
