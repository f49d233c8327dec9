//! What `agent flows` shows: per-interface counters with MTU signals, the top flows, and drops
//! named by the kernel's own drop reasons.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Counts, Direction, Flow, IfaceClass, Target};

#[derive(Debug, Clone, Serialize)]
pub struct FlowsReport {
    pub node: String,
    pub window_seconds: u64,
    /// How the TC programs were attached on this kernel.
    pub attach: super::AttachMode,
    pub interfaces: Vec<IfaceRow>,
    /// Largest first (by bytes).
    pub flows: Vec<FlowRow>,
    /// Total flows in the table (before `--top`).
    pub flows_total: usize,
    pub drops: Vec<DropRow>,
    /// TCP retransmissions on the whole node during the window.
    pub tcp_retransmits: u64,
    /// What could not be observed (attach failures, drops unavailable).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IfaceRow {
    pub iface: String,
    pub class: IfaceClass,
    pub direction: Direction,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub iface: String,
    #[serde(flatten)]
    pub flow: Flow,
    /// The kernel's name for the flow's last drop reason, when it had drops.
    pub drop_reason: Option<String>,
}

/// Drops of one kernel reason, with how many happened on each class of interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropRow {
    pub reason: String,
    pub code: u32,
    pub count: u64,
    pub by_class: BTreeMap<IfaceClass, u64>,
    /// Whether a healthy node sees this reason too (`expected`) or it is `worth-a-look`.
    pub assessment: super::reasons::DropClass,
    /// What the reason means, for the common ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<&'static str>,
}

impl DropRow {
    pub fn new(reason: String, code: u32) -> Self {
        let (assessment, meaning) = super::reasons::classify(&reason);
        Self {
            reason,
            code,
            count: 0,
            by_class: BTreeMap::new(),
            assessment,
            meaning,
        }
    }
}

/// The kernel's name for a drop reason code (from BTF), or the number when it has none.
fn reason_name(code: u32, names: Option<&BTreeMap<u32, String>>) -> String {
    names
        .and_then(|n| n.get(&code).cloned())
        .unwrap_or_else(|| format!("reason {code}"))
}

/// One row per drop reason, most frequent first, named with the kernel's enum (from BTF);
/// unknown codes stay numeric.
pub fn name_drops(
    drops: &BTreeMap<(IfaceClass, u32), u64>,
    names: Option<&BTreeMap<u32, String>>,
) -> Vec<DropRow> {
    let mut by_code: BTreeMap<u32, DropRow> = BTreeMap::new();
    for (&(class, code), &count) in drops {
        let row = by_code
            .entry(code)
            .or_insert_with(|| DropRow::new(reason_name(code, names), code));
        row.count += count;
        *row.by_class.entry(class).or_default() += count;
    }
    let mut rows: Vec<DropRow> = by_code.into_values().collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    rows
}

#[allow(
    clippy::too_many_arguments,
    reason = "assembles one report from the probe's separate reads"
)]
pub fn build(
    node: &str,
    window_seconds: u64,
    targets: &[Target],
    counts: &BTreeMap<(u32, Direction), Counts>,
    mut flows: Vec<Flow>,
    top: usize,
    drops: Vec<DropRow>,
    reason_names: Option<&BTreeMap<u32, String>>,
    notes: Vec<String>,
) -> FlowsReport {
    let name_of = |ifindex: u32| targets.iter().find(|t| t.ifindex == ifindex);
    let interfaces = counts
        .iter()
        .filter_map(|((ifindex, dir), c)| {
            name_of(*ifindex).map(|t| IfaceRow {
                iface: t.name.clone(),
                class: t.class,
                direction: *dir,
                counts: *c,
            })
        })
        .collect();
    let flows_total = flows.len();
    // Flows with drops first: they are what an operator chasing loss looks for.
    flows.sort_by(|a, b| {
        b.drops
            .cmp(&a.drops)
            .then(b.bytes.cmp(&a.bytes))
            .then(b.packets.cmp(&a.packets))
    });
    let flows = flows
        .into_iter()
        .take(top)
        .map(|f| FlowRow {
            iface: name_of(f.ifindex)
                .map_or_else(|| format!("if{}", f.ifindex), |t| t.name.clone()),
            drop_reason: f.last_drop_reason.map(|c| reason_name(c, reason_names)),
            flow: f,
        })
        .collect();
    FlowsReport {
        node: node.to_string(),
        window_seconds,
        attach: super::AttachMode::current(),
        interfaces,
        flows,
        flows_total,
        drops,
        tcp_retransmits: 0,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_named_sorted_and_split_by_class() {
        let drops = BTreeMap::from([
            ((IfaceClass::Host, 2), 5),
            ((IfaceClass::Workload, 12), 30),
            ((IfaceClass::Tunnel, 12), 10),
            ((IfaceClass::Host, 999), 1),
        ]);
        let names = BTreeMap::from([
            (2, "NOT_SPECIFIED".to_string()),
            (12, "NETFILTER_DROP".to_string()),
        ]);
        let rows = name_drops(&drops, Some(&names));
        assert_eq!(
            rows,
            [
                DropRow {
                    count: 40,
                    by_class: BTreeMap::from([
                        (IfaceClass::Tunnel, 10),
                        (IfaceClass::Workload, 30)
                    ]),
                    ..DropRow::new("NETFILTER_DROP".into(), 12)
                },
                DropRow {
                    count: 5,
                    by_class: BTreeMap::from([(IfaceClass::Host, 5)]),
                    ..DropRow::new("NOT_SPECIFIED".into(), 2)
                },
                DropRow {
                    count: 1,
                    by_class: BTreeMap::from([(IfaceClass::Host, 1)]),
                    ..DropRow::new("reason 999".into(), 999)
                },
            ]
        );
    }
}
