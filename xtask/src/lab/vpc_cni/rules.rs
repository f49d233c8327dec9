//! `iptables-restore` input for the VPC CNI lab node: Felix's chains in policy-only mode
//! (`interfacePrefix: eni`, `IptablesMangleAllowAction: Return`, no IP pools, no host
//! endpoints: shared/reference/vpc-cni-policy-only.md §3.2) and the VPC CNI's SNAT, connmark and
//! mangle rules as `iptables-save` shows them (§2.6). Felix inserts its hooks at the top of the
//! built-in chains and ipamd appends its rules after them.
//!
//! Felix's rules carry `cali:<hash>` comments computed as Felix does (see `felix_rules`); rule
//! text inside `cali-` chains approximates Felix's.

use std::fmt::Write as _;

use calico_conventions::vpc_cni::{CONNMARK_CHAIN, SNAT_CHAIN, VETH_PREFIX};

use super::{VPC_CIDR, VpcNode};
use crate::lab::felix_rules::felix_rule_hashes;

/// One chain: Felix's rules (hashed) followed by the VPC CNI's (verbatim).
struct Chain {
    name: String,
    felix: Vec<String>,
    aws: Vec<String>,
}

fn felix(name: &str, rules: Vec<String>) -> Chain {
    Chain {
        name: name.into(),
        felix: rules,
        aws: Vec::new(),
    }
}

fn aws(name: &str, rules: Vec<String>) -> Chain {
    Chain {
        name: name.into(),
        felix: Vec::new(),
        aws: rules,
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

const ACCEPT_MARK: &str = "-m mark --mark 0x10000/0x10000";
const HEP_ACCEPTED: &str = "-m comment --comment \"Host endpoint policy accepted packet.\"";

pub(super) fn iptables_restore(node: &VpcNode) -> String {
    let mut out = String::new();
    render(&mut out, "raw", &["PREROUTING", "OUTPUT"], &raw());
    render(
        &mut out,
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        &mangle(node),
    );
    render(
        &mut out,
        "nat",
        &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        &nat(node),
    );
    render(
        &mut out,
        "filter",
        &["INPUT", "FORWARD", "OUTPUT"],
        &filter(node),
    );
    out
}

fn render(out: &mut String, table: &str, builtins: &[&str], chains: &[Chain]) {
    let _ = writeln!(out, "*{table}");
    for b in builtins {
        let _ = writeln!(out, ":{b} ACCEPT [0:0]");
    }
    for c in chains
        .iter()
        .filter(|c| !builtins.contains(&c.name.as_str()))
    {
        let _ = writeln!(out, ":{} - [0:0]", c.name);
    }
    for c in chains {
        for (rule, hash) in c.felix.iter().zip(felix_rule_hashes(&c.name, &c.felix)) {
            let _ = writeln!(
                out,
                "-A {} -m comment --comment \"cali:{hash}\" {rule}",
                c.name
            );
        }
        for rule in &c.aws {
            let _ = writeln!(out, "-A {} {rule}", c.name);
        }
    }
    let _ = writeln!(out, "COMMIT");
}

/// 1-based position of the rule for `fault` in `chain` of `table`, as `iptables -D chain N`
/// takes it.
pub(super) fn position(node: &VpcNode, table: &str, chain: &str, needle: &str) -> Option<usize> {
    let chains = match table {
        "nat" => nat(node),
        "filter" => filter(node),
        "mangle" => mangle(node),
        _ => raw(),
    };
    let c = chains.into_iter().find(|c| c.name == chain)?;
    c.felix
        .iter()
        .chain(&c.aws)
        .position(|r| r.contains(needle))
        .map(|i| i + 1)
}

fn raw() -> Vec<Chain> {
    vec![
        felix("PREROUTING", vec![s("--jump cali-PREROUTING")]),
        felix("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        felix(
            "cali-PREROUTING",
            vec![
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                format!("-i {VETH_PREFIX}+ --jump MARK --set-xmark 0x80000/0x80000"),
            ],
        ),
        felix(
            "cali-OUTPUT",
            vec![s("--jump MARK --set-xmark 0x0/0x1b0000")],
        ),
    ]
}

fn mangle(node: &VpcNode) -> Vec<Chain> {
    let primary = &node.enis[0].name;
    let restore = "-j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80";
    let mut prerouting = felix("PREROUTING", vec![s("--jump cali-PREROUTING")]);
    // `SetupHostNetwork`: appended, so they run after Felix's RETURN for established flows.
    prerouting.aws = vec![
        format!(
            "-i {primary} -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80"
        ),
        format!("-i {VETH_PREFIX}+ -m comment --comment \"AWS, primary ENI\" {restore}"),
        format!("-i vlan+ -m comment --comment \"AWS, primary ENI\" {restore}"),
    ];
    vec![
        prerouting,
        felix("POSTROUTING", vec![s("--jump cali-POSTROUTING")]),
        // IptablesMangleAllowAction=Return (operator, any non-Calico CNI).
        felix(
            "cali-PREROUTING",
            vec![
                s("-m conntrack --ctstate RELATED,ESTABLISHED --jump RETURN"),
                format!("{ACCEPT_MARK} --jump RETURN"),
                s("--jump cali-from-host-endpoint"),
                format!("{HEP_ACCEPTED} {ACCEPT_MARK} --jump RETURN"),
            ],
        ),
        felix(
            "cali-POSTROUTING",
            vec![
                format!("{ACCEPT_MARK} --jump RETURN"),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("-m conntrack --ctstate DNAT --jump cali-to-host-endpoint"),
                format!("{HEP_ACCEPTED} {ACCEPT_MARK} --jump RETURN"),
            ],
        ),
        felix("cali-from-host-endpoint", vec![]),
        felix("cali-to-host-endpoint", vec![]),
    ]
}

fn nat(node: &VpcNode) -> Vec<Chain> {
    let primary_ip = node.enis[0].ip;
    let mut prerouting = felix("PREROUTING", vec![s("--jump cali-PREROUTING")]);
    prerouting.aws = vec![
        format!(
            "-i {VETH_PREFIX}+ -m comment --comment \"AWS, outbound connections\" -j {CONNMARK_CHAIN}"
        ),
        s(
            "-m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        ),
    ];
    let mut postrouting = felix("POSTROUTING", vec![s("--jump cali-POSTROUTING")]);
    postrouting.aws = vec![format!(
        "-m comment --comment \"AWS SNAT CHAIN\" -j {SNAT_CHAIN}"
    )];
    vec![
        prerouting,
        felix("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        postrouting,
        felix("cali-PREROUTING", vec![s("--jump cali-fip-dnat")]),
        felix("cali-OUTPUT", vec![s("--jump cali-fip-dnat")]),
        // No IP pools: cali-nat-outgoing exists, empty; no tunnel MASQUERADE.
        felix(
            "cali-POSTROUTING",
            vec![s("--jump cali-fip-snat"), s("--jump cali-nat-outgoing")],
        ),
        felix("cali-nat-outgoing", vec![]),
        felix("cali-fip-dnat", vec![]),
        felix("cali-fip-snat", vec![]),
        aws(
            SNAT_CHAIN,
            vec![
                format!("-d {VPC_CIDR} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"),
                format!(
                    "! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary_ip} --random-fully"
                ),
            ],
        ),
        aws(
            CONNMARK_CHAIN,
            vec![
                format!("-d {VPC_CIDR} -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN"),
                s("-m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80"),
            ],
        ),
    ]
}

fn filter(node: &VpcNode) -> Vec<Chain> {
    let p = VETH_PREFIX;
    let mut chains = vec![
        felix("INPUT", vec![s("--jump cali-INPUT")]),
        felix(
            "FORWARD",
            vec![
                s("--jump cali-FORWARD"),
                format!(
                    "-m comment --comment \"Policy explicitly accepted packet.\" {ACCEPT_MARK} --jump ACCEPT"
                ),
                s("--jump MARK --set-xmark 0x10000/0x10000"),
            ],
        ),
        felix("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        felix(
            "cali-FORWARD",
            vec![
                s("--jump MARK --set-xmark 0x0/0x1a0000"),
                s("-m mark --mark 0x0/0x10000 --jump cali-from-hep-forward"),
                format!("-i {p}+ --jump cali-from-wl-dispatch"),
                format!("-o {p}+ --jump cali-to-wl-dispatch"),
                s("--jump cali-to-hep-forward"),
                s("--jump cali-cidr-block"),
            ],
        ),
        felix(
            "cali-INPUT",
            vec![
                format!("-i {p}+ --goto cali-wl-to-host"),
                format!("{ACCEPT_MARK} --jump ACCEPT"),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("--jump cali-from-host-endpoint"),
                format!("{HEP_ACCEPTED} {ACCEPT_MARK} --jump ACCEPT"),
            ],
        ),
        felix(
            "cali-OUTPUT",
            vec![
                format!("{ACCEPT_MARK} --jump ACCEPT"),
                format!("-o {p}+ --jump RETURN"),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("-m conntrack ! --ctstate DNAT --jump cali-to-host-endpoint"),
                format!("{HEP_ACCEPTED} {ACCEPT_MARK} --jump ACCEPT"),
            ],
        ),
        felix(
            "cali-wl-to-host",
            vec![
                s("--jump cali-from-wl-dispatch"),
                // The operator sets FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT.
                s("-m comment --comment \"Configured DefaultEndpointToHostAction\" --jump ACCEPT"),
            ],
        ),
        felix("cali-from-hep-forward", vec![]),
        felix("cali-to-hep-forward", vec![]),
        felix("cali-cidr-block", vec![]),
        // No host endpoints: these are empty, and the failsafe chains are not referenced, so
        // Felix does not program them.
        felix("cali-from-host-endpoint", vec![]),
        felix("cali-to-host-endpoint", vec![]),
        felix("cali-pri-kns.default", profile()),
        felix("cali-pro-kns.default", profile()),
    ];
    let veths: Vec<&str> = node.pods.iter().map(|p| p.veth.as_str()).collect();
    chains.extend(dispatch("cali-from-wl-dispatch", "-i", "cali-fw-", &veths));
    chains.extend(dispatch("cali-to-wl-dispatch", "-o", "cali-tw-", &veths));
    for v in &veths {
        chains.push(workload(
            &format!("cali-fw-{v}"),
            "cali-pro-kns.default",
            true,
        ));
        chains.push(workload(
            &format!("cali-tw-{v}"),
            "cali-pri-kns.default",
            false,
        ));
    }
    chains
}

/// Felix's dispatch tree (`buildSingleDispatchChainTree`): names sorted, common prefix
/// stripped; a next character shared by several names gets a child chain `<root>-<char>`,
/// a name alone is dispatched inline.
fn dispatch(root: &str, flag: &str, target: &str, ifaces: &[&str]) -> Vec<Chain> {
    let mut sorted = ifaces.to_vec();
    sorted.sort_unstable();
    let common = sorted.first().map_or(0, |first| {
        (0..first.len())
            .take_while(|i| {
                sorted
                    .iter()
                    .all(|n| n.as_bytes().get(*i) == first.as_bytes().get(*i))
            })
            .count()
    });
    let unknown = s("-m comment --comment \"Unknown interface\" --jump DROP");
    let entry = |n: &str| format!("{flag} {n} --goto {target}{n}");
    let mut root_rules = Vec::new();
    let mut children = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let next = sorted[i].get(common..=common).unwrap_or("");
        let group: Vec<&str> = sorted[i..]
            .iter()
            .take_while(|n| n.get(common..=common).unwrap_or("") == next)
            .copied()
            .collect();
        i += group.len();
        if group.len() == 1 {
            root_rules.push(entry(group[0]));
        } else {
            let child = format!("{root}-{next}");
            root_rules.push(format!("{flag} {}+ --goto {child}", &group[0][..=common]));
            let mut rules: Vec<String> = group.iter().map(|n| entry(n)).collect();
            rules.push(unknown.clone());
            children.push(felix(&child, rules));
        }
    }
    root_rules.push(unknown);
    let mut chains = vec![felix(root, root_rules)];
    chains.extend(children);
    chains
}

fn workload(name: &str, profile: &str, from_workload: bool) -> Chain {
    let mut rules = vec![
        s("-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT"),
        s("-m conntrack --ctstate INVALID --jump DROP"),
        s("--jump MARK --set-xmark 0x0/0x10000"),
    ];
    if from_workload {
        rules.push(s("-p udp -m comment --comment \"Drop VXLAN encapped packets originating in workloads\" -m multiport --dports 4789 --jump DROP"));
        rules.push(s("-p ipencap -m comment --comment \"Drop IPinIP encapped packets originating in workloads\" --jump DROP"));
    }
    rules.push(format!("--jump {profile}"));
    rules.push(s("-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 --jump RETURN"));
    rules.push(s(
        "-m comment --comment \"Drop if no profiles matched\" --jump DROP",
    ));
    felix(name, rules)
}

fn profile() -> Vec<String> {
    vec![
        s("--jump MARK --set-xmark 0x10000/0x10000"),
        s("-m mark --mark 0x10000/0x10000 --jump RETURN"),
    ]
}

/// The dispatch chain holding `veth`'s entry (a child chain when it shares a next character).
pub(super) fn dispatch_chain_of(node: &VpcNode, veth: &str) -> Option<String> {
    let veths: Vec<&str> = node.pods.iter().map(|p| p.veth.as_str()).collect();
    dispatch("cali-from-wl-dispatch", "-i", "cali-fw-", &veths)
        .into_iter()
        .find(|c| {
            c.felix
                .iter()
                .any(|r| r.starts_with(&format!("-i {veth} ")))
        })
        .map(|c| c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_groups_a_shared_next_character_into_a_child_chain() {
        let chains = dispatch(
            "cali-from-wl-dispatch",
            "-i",
            "cali-fw-",
            &["enic440f455693", "enia7a3e029a7b", "eniccec0fc857b"],
        );
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[0].felix,
            [
                "-i enia7a3e029a7b --goto cali-fw-enia7a3e029a7b",
                "-i enic+ --goto cali-from-wl-dispatch-c",
                "-m comment --comment \"Unknown interface\" --jump DROP"
            ]
        );
        assert_eq!(chains[1].name, "cali-from-wl-dispatch-c");
        assert_eq!(chains[1].felix.len(), 3);
    }
}
