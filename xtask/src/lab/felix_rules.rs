//! Felix-shaped iptables rules and ipsets for a lab node (iptables mode, VXLAN, one host
//! endpoint on eth0 so that the failsafe chains are referenced), following
//! shared/reference/calico-dataplane.md §4.
//!
//! Every rule carries Felix's `cali:<hash>` comment computed with Felix's algorithm
//! (`generictables.RuleHashes`) over Felix's render format (`-A <chain> HASH <rule>`). For the
//! hooks in the built-in chains the render is exactly Felix's (tested against the verified
//! hashes); inside `cali-` chains our rule text approximates Felix's, so those hashes are
//! Felix-shaped rather than byte-identical.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha224};

use super::spec::{
    FAILSAFE_IN, FAILSAFE_OUT, LabSpec, NodeSpec, UNDERLAY_DEV, VXLAN_DEV, VXLAN_PORT,
};

/// A chain and its rules (rule text without `-A <chain>` and without the hash comment).
struct Chain {
    name: String,
    rules: Vec<String>,
}

impl Chain {
    fn new(name: &str, rules: Vec<String>) -> Self {
        Self {
            name: name.into(),
            rules,
        }
    }
}

/// Felix's rule hashes for a chain: `h0 = sha224(name)`, `h_i = sha224(h_{i-1} ‖ render_i)`,
/// each shown as the first 16 chars of unpadded URL-safe base64.
pub fn felix_rule_hashes(chain: &str, rules: &[String]) -> Vec<String> {
    let mut h = Sha224::digest(chain.as_bytes()).to_vec();
    rules
        .iter()
        .map(|r| {
            let mut s = Sha224::new();
            s.update(&h);
            s.update(format!("-A {chain} HASH {r}").as_bytes());
            h = s.finalize().to_vec();
            base64url(&h)[..16].to_string()
        })
        .collect()
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Renders `iptables-restore` input for the filter, nat and raw tables of `node`.
pub fn iptables_restore(node: &NodeSpec) -> String {
    let mut out = String::new();
    render_table(&mut out, "raw", &["PREROUTING", "OUTPUT"], &raw_chains());
    render_table(
        &mut out,
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        &mangle_chains(),
    );
    render_table(
        &mut out,
        "nat",
        &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        &nat_chains(),
    );
    render_table(
        &mut out,
        "filter",
        &["INPUT", "FORWARD", "OUTPUT"],
        &filter_chains(node),
    );
    out
}

/// `ip6tables-restore` input: Felix's base-chain hooks into its chains, which are left
/// empty (the lab's IPv6 side carries no policy; the hooks are what is verified).
pub fn ip6tables_hooks() -> String {
    let mut out = String::new();
    render_table(
        &mut out,
        "raw",
        &["PREROUTING", "OUTPUT"],
        &hooks(&[("PREROUTING", "cali-PREROUTING"), ("OUTPUT", "cali-OUTPUT")]),
    );
    render_table(
        &mut out,
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        &hooks(&[
            ("PREROUTING", "cali-PREROUTING"),
            ("POSTROUTING", "cali-POSTROUTING"),
        ]),
    );
    render_table(
        &mut out,
        "nat",
        &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        &hooks(&[
            ("PREROUTING", "cali-PREROUTING"),
            ("OUTPUT", "cali-OUTPUT"),
            ("POSTROUTING", "cali-POSTROUTING"),
        ]),
    );
    render_table(
        &mut out,
        "filter",
        &["INPUT", "FORWARD", "OUTPUT"],
        &hooks(&[
            ("INPUT", "cali-INPUT"),
            ("FORWARD", "cali-FORWARD"),
            ("OUTPUT", "cali-OUTPUT"),
        ]),
    );
    out
}

/// Each built-in chain jumping to its (empty) Felix chain.
fn hooks(pairs: &[(&str, &str)]) -> Vec<Chain> {
    let mut chains: Vec<Chain> = pairs
        .iter()
        .map(|(builtin, chain)| Chain::new(builtin, vec![format!("--jump {chain}")]))
        .collect();
    chains.extend(pairs.iter().map(|(_, chain)| Chain::new(chain, vec![])));
    chains
}

/// `ipset restore` input: the sets Felix's VXLAN and NAT-outgoing rules match on.
pub fn ipset_restore(spec: &LabSpec, node: &NodeSpec) -> String {
    let mut out = String::new();
    let pool = spec.pool;
    for (name, members) in [
        (
            "cali40all-vxlan-net",
            spec.remotes_of(node)
                .map(|n| n.ip.to_string())
                .collect::<Vec<_>>(),
        ),
        ("cali40masq-ipam-pools", vec![pool.to_string()]),
        ("cali40network-ip-pools", vec![pool.to_string()]),
    ] {
        let _ = writeln!(out, "create {name} hash:net family inet -exist");
        let _ = writeln!(out, "flush {name}");
        for m in members {
            let _ = writeln!(out, "add {name} {m}");
        }
    }
    out
}

fn render_table(out: &mut String, table: &str, builtins: &[&str], chains: &[Chain]) {
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
        let hashes = felix_rule_hashes(&c.name, &c.rules);
        for (rule, hash) in c.rules.iter().zip(hashes) {
            let _ = writeln!(
                out,
                "-A {} -m comment --comment \"cali:{hash}\" {rule}",
                c.name
            );
        }
    }
    let _ = writeln!(out, "COMMIT");
}

fn s(v: &str) -> String {
    v.to_string()
}

fn raw_chains() -> Vec<Chain> {
    vec![
        Chain::new("PREROUTING", vec![s("--jump cali-PREROUTING")]),
        Chain::new("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        Chain::new(
            "cali-PREROUTING",
            vec![
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                format!("-p udp --dport {VXLAN_PORT} --jump NOTRACK"),
                s("-i cali+ --jump MARK --set-xmark 0x80000/0x80000"),
            ],
        ),
        Chain::new(
            "cali-OUTPUT",
            vec![
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                format!("-p udp --dport {VXLAN_PORT} --jump NOTRACK"),
            ],
        ),
    ]
}

fn mangle_chains() -> Vec<Chain> {
    let accept_mark = "-m mark --mark 0x10000/0x10000";
    vec![
        Chain::new("PREROUTING", vec![s("--jump cali-PREROUTING")]),
        Chain::new("POSTROUTING", vec![s("--jump cali-POSTROUTING")]),
        Chain::new(
            "cali-PREROUTING",
            vec![
                s("-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT"),
                format!("{accept_mark} --jump ACCEPT"),
                s("--jump cali-from-host-endpoint"),
                format!(
                    "-m comment --comment \"Host endpoint policy accepted packet.\" {accept_mark} --jump ACCEPT"
                ),
            ],
        ),
        Chain::new(
            "cali-POSTROUTING",
            vec![
                format!("{accept_mark} --jump RETURN"),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("-m conntrack --ctstate DNAT --jump cali-to-host-endpoint"),
                format!(
                    "-m comment --comment \"Host endpoint policy accepted packet.\" {accept_mark} --jump RETURN"
                ),
            ],
        ),
        // Host endpoints have no mangle-table policy here: the chains exist, empty.
        Chain::new("cali-from-host-endpoint", vec![]),
        Chain::new("cali-to-host-endpoint", vec![]),
    ]
}

fn nat_chains() -> Vec<Chain> {
    vec![
        Chain::new("PREROUTING", vec![s("--jump cali-PREROUTING")]),
        Chain::new("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        Chain::new("POSTROUTING", vec![s("--jump cali-POSTROUTING")]),
        Chain::new("cali-PREROUTING", vec![s("--jump cali-fip-dnat")]),
        Chain::new("cali-OUTPUT", vec![s("--jump cali-fip-dnat")]),
        Chain::new(
            "cali-POSTROUTING",
            vec![
                s("--jump cali-fip-snat"),
                s("--jump cali-nat-outgoing"),
                format!(
                    "-o {VXLAN_DEV} -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL --jump MASQUERADE --random-fully"
                ),
            ],
        ),
        Chain::new(
            "cali-nat-outgoing",
            vec![s(
                "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40network-ip-pools dst --jump MASQUERADE --random-fully",
            )],
        ),
        Chain::new("cali-fip-dnat", vec![]),
        Chain::new("cali-fip-snat", vec![]),
    ]
}

fn filter_chains(node: &NodeSpec) -> Vec<Chain> {
    let accept_mark = "-m mark --mark 0x10000/0x10000";
    let mut chains = vec![
        Chain::new("INPUT", vec![s("--jump cali-INPUT")]),
        Chain::new(
            "FORWARD",
            vec![
                s("--jump cali-FORWARD"),
                format!(
                    "-m comment --comment \"Policy explicitly accepted packet.\" {accept_mark} --jump ACCEPT"
                ),
                s("--jump MARK --set-xmark 0x10000/0x10000"),
            ],
        ),
        Chain::new("OUTPUT", vec![s("--jump cali-OUTPUT")]),
        Chain::new(
            "cali-FORWARD",
            vec![
                s("--jump MARK --set-xmark 0x0/0x1a0000"),
                s("-m mark --mark 0x0/0x10000 --jump cali-from-hep-forward"),
                s("-i cali+ --jump cali-from-wl-dispatch"),
                s("-o cali+ --jump cali-to-wl-dispatch"),
                s("--jump cali-to-hep-forward"),
                s("--jump cali-cidr-block"),
            ],
        ),
        Chain::new(
            "cali-INPUT",
            vec![
                format!(
                    "-p udp -m comment --comment \"Allow IPv4 VXLAN packets from allowed hosts\" -m multiport --dports {VXLAN_PORT} -m set --match-set cali40all-vxlan-net src -m addrtype --dst-type LOCAL --jump ACCEPT"
                ),
                format!(
                    "-p udp -m comment --comment \"Drop IPv4 VXLAN packets from non-allowed hosts\" -m multiport --dports {VXLAN_PORT} -m addrtype --dst-type LOCAL --jump DROP"
                ),
                s("-i cali+ --goto cali-wl-to-host"),
                format!("{accept_mark} --jump ACCEPT"),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("--jump cali-from-host-endpoint"),
                format!(
                    "-m comment --comment \"Host endpoint policy accepted packet.\" {accept_mark} --jump ACCEPT"
                ),
            ],
        ),
        Chain::new(
            "cali-OUTPUT",
            vec![
                format!("{accept_mark} --jump ACCEPT"),
                s("-o cali+ --jump RETURN"),
                format!(
                    "-p udp -m comment --comment \"Allow IPv4 VXLAN packets to other allowed hosts\" -m multiport --dports {VXLAN_PORT} -m addrtype --src-type LOCAL -m set --match-set cali40all-vxlan-net dst --jump ACCEPT"
                ),
                s("--jump MARK --set-xmark 0x0/0x1b0000"),
                s("-m conntrack ! --ctstate DNAT --jump cali-to-host-endpoint"),
                format!(
                    "-m comment --comment \"Host endpoint policy accepted packet.\" {accept_mark} --jump ACCEPT"
                ),
            ],
        ),
        Chain::new(
            "cali-wl-to-host",
            vec![
                s("--jump cali-from-wl-dispatch"),
                s("-m comment --comment \"Configured DefaultEndpointToHostAction\" --jump ACCEPT"),
            ],
        ),
        Chain::new("cali-from-hep-forward", vec![]),
        Chain::new("cali-to-hep-forward", vec![]),
        Chain::new("cali-cidr-block", vec![]),
        Chain::new(
            "cali-from-host-endpoint",
            vec![format!("-i {UNDERLAY_DEV} --goto cali-fh-{UNDERLAY_DEV}")],
        ),
        Chain::new(
            "cali-to-host-endpoint",
            vec![format!("-o {UNDERLAY_DEV} --goto cali-th-{UNDERLAY_DEV}")],
        ),
        host_endpoint_chain(&format!("cali-fh-{UNDERLAY_DEV}"), "cali-failsafe-in"),
        host_endpoint_chain(&format!("cali-th-{UNDERLAY_DEV}"), "cali-failsafe-out"),
        Chain::new("cali-failsafe-in", failsafe_rules(FAILSAFE_IN, "--dports")),
        Chain::new(
            "cali-failsafe-out",
            failsafe_rules(FAILSAFE_OUT, "--dports"),
        ),
        Chain::new("cali-pri-kns.default", profile_rules()),
        Chain::new("cali-pro-kns.default", profile_rules()),
    ];
    let mut from_dispatch = Vec::new();
    let mut to_dispatch = Vec::new();
    for pod in &node.pods {
        let v = &pod.veth;
        from_dispatch.push(format!("-i {v} --goto cali-fw-{v}"));
        to_dispatch.push(format!("-o {v} --goto cali-tw-{v}"));
        chains.push(workload_chain(
            &format!("cali-fw-{v}"),
            "cali-pro-kns.default",
            true,
        ));
        chains.push(workload_chain(
            &format!("cali-tw-{v}"),
            "cali-pri-kns.default",
            false,
        ));
    }
    let unknown = s("-m comment --comment \"Unknown interface\" --jump DROP");
    from_dispatch.push(unknown.clone());
    to_dispatch.push(unknown);
    chains.push(Chain::new("cali-from-wl-dispatch", from_dispatch));
    chains.push(Chain::new("cali-to-wl-dispatch", to_dispatch));
    chains
}

fn failsafe_rules(ports: &[(&str, u16)], flag: &str) -> Vec<String> {
    ports
        .iter()
        .map(|(proto, port)| format!("-p {proto} -m multiport {flag} {port} --jump ACCEPT"))
        .collect()
}

fn host_endpoint_chain(name: &str, failsafe: &str) -> Chain {
    Chain::new(
        name,
        vec![
            s("-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT"),
            s("-m conntrack --ctstate INVALID --jump DROP"),
            format!("--jump {failsafe}"),
            s("--jump MARK --set-xmark 0x0/0x10000"),
            // The auto host endpoint's default-allow profile.
            s(
                "-m comment --comment \"Allow by profile projectcalico-default-allow\" --jump MARK --set-xmark 0x10000/0x10000",
            ),
            s(
                "-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 --jump RETURN",
            ),
            s("-m comment --comment \"Drop if no profiles matched\" --jump DROP"),
        ],
    )
}

fn workload_chain(name: &str, profile: &str, from_workload: bool) -> Chain {
    let mut rules = vec![
        s("-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT"),
        s("-m conntrack --ctstate INVALID --jump DROP"),
        s("--jump MARK --set-xmark 0x0/0x10000"),
    ];
    if from_workload {
        rules.push(format!(
            "-p udp -m comment --comment \"Drop VXLAN encapped packets originating in workloads\" -m multiport --dports {VXLAN_PORT} --jump DROP"
        ));
        rules.push(s("-p ipencap -m comment --comment \"Drop IPinIP encapped packets originating in workloads\" --jump DROP"));
    }
    rules.push(format!("--jump {profile}"));
    rules.push(s("-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 --jump RETURN"));
    rules.push(s(
        "-m comment --comment \"Drop if no profiles matched\" --jump DROP",
    ));
    Chain::new(name, rules)
}

fn profile_rules() -> Vec<String> {
    vec![
        s("--jump MARK --set-xmark 0x10000/0x10000"),
        s("-m mark --mark 0x10000/0x10000 --jump RETURN"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_hashes_match_felix() {
        // Verified values from shared/reference/calico-dataplane.md §4.1.
        assert_eq!(
            felix_rule_hashes("INPUT", &[s("--jump cali-INPUT")]),
            ["Cz_u1IQiXIMmKD4c"]
        );
        assert_eq!(
            felix_rule_hashes("FORWARD", &[s("--jump cali-FORWARD")]),
            ["wUHhoiAYhphO9Mso"]
        );
        assert_eq!(
            felix_rule_hashes("OUTPUT", &[s("--jump cali-OUTPUT")]),
            ["tVnHkvAo15HuiPy0"]
        );
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn failsafe_chain_lists_every_default_port() {
        let spec = LabSpec::new("t");
        let text = iptables_restore(&spec.nodes[0]);
        let failsafe_in = text
            .lines()
            .filter(|l| l.starts_with("-A cali-failsafe-in "))
            .count();
        assert_eq!(failsafe_in, FAILSAFE_IN.len());
        assert!(
            text.contains(
                "-A INPUT -m comment --comment \"cali:Cz_u1IQiXIMmKD4c\" --jump cali-INPUT"
            )
        );
    }
}
