//! `agent flows` as text: interfaces, top flows, drops per kernel reason and class.

use std::{collections::BTreeMap, fmt::Write as _};

use super::wrap;
use crate::flows::{AttachMode, IfaceClass, report::FlowsReport};

/// `workload 3, host 1`: where a reason's drops happened, most first.
pub fn class_breakdown(by_class: &BTreeMap<IfaceClass, u64>) -> String {
    let mut v: Vec<_> = by_class.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(c, n)| format!("{} {n}", c.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

pub fn text(r: &FlowsReport, drops_only: bool) -> String {
    let mut o = String::new();
    wrap::write(
        &mut o,
        "",
        "  ",
        &format!(
            "node {}: traffic in the {} s since the programs were attached (with {})",
            r.node,
            r.window_seconds,
            if r.attach == AttachMode::Tcx {
                "tcx"
            } else {
                "clsact"
            }
        ),
    );
    if !drops_only {
        let _ = writeln!(o, "\nINTERFACES");
        let _ = writeln!(
            o,
            "  {:<15} {:<8} {:<7} {:>9} {:>11} {:>7} {:>9}",
            "iface", "class", "dir", "packets", "bytes", "df>mtu", "frag-need"
        );
        for i in &r.interfaces {
            wrap::write(
                &mut o,
                "  ",
                "    ",
                &format!(
                    "{:<15} {:<8} {:<7} {:>9} {:>11} {:>7} {:>9}",
                    i.iface,
                    i.class.name(),
                    format!("{:?}", i.direction).to_lowercase(),
                    i.counts.packets,
                    i.counts.bytes,
                    i.counts.df_oversize,
                    i.counts.icmp_frag_needed
                ),
            );
        }
        let _ = writeln!(
            o,
            "\nTOP FLOWS ({} of {}, dropped first, then by bytes)",
            r.flows.len(),
            r.flows_total
        );
        for f in &r.flows {
            let fl = &f.flow;
            let ends = if fl.proto == 1 {
                format!(
                    "{} -> {} type {} code {}",
                    fl.src, fl.dst, fl.sport, fl.dport
                )
            } else {
                format!("{}:{} -> {}:{}", fl.src, fl.sport, fl.dst, fl.dport)
            };
            let dropped = match (&f.drop_reason, fl.drops) {
                (_, 0) => String::new(),
                (Some(r), n) => format!("  DROPPED {n} ({r})"),
                (None, n) => format!("  DROPPED {n}"),
            };
            wrap::write(
                &mut o,
                &format!("  {:<5} ", proto_name(fl.proto)),
                "        ",
                &format!(
                    "{ends} on {}: {} pkts {} B{}{}",
                    f.iface,
                    fl.packets,
                    fl.bytes,
                    if fl.df_oversize { "  DF>MTU" } else { "" },
                    dropped
                ),
            );
        }
    }
    let _ = writeln!(o, "\nDROPS (whole node, by kernel drop reason)");
    super::diag_text::drop_rows(&mut o, &r.drops);
    let _ = writeln!(
        o,
        "\nTCP RETRANSMISSIONS (whole node): {}",
        r.tcp_retransmits
    );
    for n in &r.notes {
        wrap::write(&mut o, "  note: ", "    ", n);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_listed_largest_first() {
        let by_class = BTreeMap::from([(IfaceClass::Tunnel, 10), (IfaceClass::Workload, 30)]);
        assert_eq!(class_breakdown(&by_class), "workload 30, tunnel 10");
    }
}
