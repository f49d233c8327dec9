//! Human rendering of an [`Analysis`]: findings first, then the dataplane section by section,
//! then a one-line summary. Plain text that fits an 100-column terminal; long lists are elided.

use std::fmt::Write as _;

use crate::{
    analysis::Analysis,
    observed::Route,
    verify::{Severity, Verification},
};

/// Rows shown per route group before eliding the rest.
const MAX_ROWS: usize = 12;

pub fn text(a: &Analysis) -> String {
    let d = &a.diag;
    let mut o = String::new();
    if !d.calico_found {
        let _ = writeln!(o, "node {}: no Calico dataplane found on this node", d.node);
        if !d.missing_capabilities.is_empty() {
            let _ = writeln!(
                o,
                "  (in what could be read: running without {}, so Felix's chains could not be looked at)",
                d.missing_capabilities.join(", ")
            );
        }
        let _ = writeln!(
            o,
            "  (no Calico tunnel devices, cali* workload interfaces, Felix chains, Calico routes or eBPF maps)"
        );
        for u in d.unavailable.iter().filter(|u| !u.kind.live_service()) {
            let _ = writeln!(o, "  not observable: {}: {}", u.source, u.reason);
        }
        return o;
    }
    let modes: Vec<&str> = d.modes.iter().map(|m| m.name()).collect();
    let _ = writeln!(o, "node {}  mode: {}", d.node, modes.join(" + "));
    for e in &d.evidence {
        let _ = writeln!(o, "  · {e}");
    }

    if let Some(v) = &a.verification {
        findings(&mut o, v, a.daemon.as_ref());
        daemon(&mut o, a);
    }
    traffic(&mut o, a);
    if !d.anomalies.is_empty() {
        let _ = writeln!(o, "\nLIMITS OF THIS REPORT");
        for an in &d.anomalies {
            let _ = writeln!(o, "  {}  {}: {}", an.severity.tag(), an.subject, an.message);
        }
    }

    let _ = writeln!(o, "\nTUNNELS");
    if d.tunnels.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for t in &d.tunnels {
        let mut line = format!(
            "  {:<15} {:<5} mtu {:<5} {}",
            t.name,
            if t.up { "up" } else { "DOWN" },
            t.mtu,
            t.addresses.join(",")
        );
        if let Some(vni) = t.vni {
            let _ = write!(line, "  vni {vni}");
        }
        if let Some(p) = t.port {
            let _ = write!(line, " port {p}");
        }
        if let Some(l) = &t.local {
            let _ = write!(line, " local {l}");
        }
        if let Some(p) = &t.parent {
            let _ = write!(line, " dev {p}");
        }
        if let Some(learning) = t.learning {
            line.push_str(if learning { " learning" } else { " nolearning" });
        }
        if let Some(m) = &t.mac {
            let _ = write!(line, " mac {m}");
        }
        let _ = writeln!(o, "{line}");
    }

    let g = &d.routes;
    let _ = writeln!(
        o,
        "\nROUTES (Calico-owned; {} others not shown)",
        g.not_calico
    );
    section(&mut o, "local block blackholes", &g.local_blackholes);
    section(&mut o, "remote blocks via tunnel", &g.remote_via_tunnel);
    section(&mut o, "remote blocks via underlay", &g.remote_via_underlay);
    section(&mut o, "tunnel host routes", &g.tunnel_hosts);
    section(&mut o, "workload routes", &g.workload);
    if !g.other_tables.is_empty() {
        section(&mut o, "other tables", &g.other_tables);
    }

    if !d.vxlan_fdb.is_empty()
        || !d.vxlan_neighbours.is_empty()
        || d.tunnels.iter().any(|t| t.vni.is_some())
    {
        let _ = writeln!(o, "\nVXLAN FDB / ARP");
        for f in &d.vxlan_fdb {
            let dst = f
                .destination
                .map(|ip| format!(" dst {ip}"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  fdb   {} dev {}{dst} {}",
                f.mac,
                f.dev,
                f.state.to_lowercase()
            );
        }
        for n in &d.vxlan_neighbours {
            let _ = writeln!(
                o,
                "  neigh {} dev {} lladdr {} {}",
                n.destination,
                n.dev,
                n.lladdr.as_deref().unwrap_or("-"),
                n.state
            );
        }
        if d.vxlan_fdb.is_empty() && d.vxlan_neighbours.is_empty() {
            let _ = writeln!(o, "  none");
        }
    }

    let _ = writeln!(o, "\nWORKLOADS ({})", d.workloads.len());
    for w in d.workloads.iter().take(MAX_ROWS) {
        let _ = writeln!(
            o,
            "  {:<15} {:<5} mtu {:<5} {}{}",
            w.iface,
            if w.up { "up" } else { "DOWN" },
            w.mtu,
            w.routes.join(","),
            if w.proxy_arp == Some(1) {
                ""
            } else {
                "  proxy_arp off"
            }
        );
    }
    elided(&mut o, d.workloads.len());
    if let Some(v) = &d.vpc_cni {
        vpc_cni(&mut o, v);
    }

    let _ = writeln!(
        o,
        "\nFELIX RULES (backend in use: {})",
        d.rules_backend.as_deref().unwrap_or("none found")
    );
    for s in &d.felix_chains {
        let _ = writeln!(
            o,
            "  {:<16} {} chains, {} rules",
            s.source, s.felix_chains, s.felix_rules
        );
        for h in &s.hooks {
            let _ = writeln!(o, "    {h}");
        }
    }

    let s = &d.sysctls;
    let _ = writeln!(o, "\nSYSCTLS");
    let _ = writeln!(
        o,
        "  ip_forward={}  rp_filter all={} default={}{}",
        opt(s.ip_forward),
        opt(s.rp_filter_all),
        opt(s.rp_filter_default),
        s.conntrack
            .map(|(c, m)| format!("  conntrack {c}/{m}"))
            .unwrap_or_default()
    );
    if let Some(b) = &s.conntrack_breakdown {
        let _ = writeln!(o, "  conntrack: {b}");
    }
    if let Some(c) = &s.calico_conntrack {
        let _ = writeln!(o, "  calico eBPF conntrack {c}");
    }
    if !s.rp_filter_strict.is_empty() {
        let _ = writeln!(
            o,
            "  strict rp_filter on: {}",
            s.rp_filter_strict.join(", ")
        );
    }
    if !s.proxy_arp_off.is_empty() {
        let _ = writeln!(o, "  proxy_arp off on: {}", s.proxy_arp_off.join(", "));
    }

    input_notes(&mut o, a);
    summary(&mut o, a);
    o
}

fn traffic(o: &mut String, a: &Analysis) {
    let t = match (&a.traffic, &a.traffic_unavailable) {
        (Some(t), _) => t,
        (None, Some(why)) => {
            let _ = writeln!(o, "\nDROPS unavailable: {why}");
            return;
        }
        (None, None) => return,
    };
    let _ = writeln!(
        o,
        "\nDROPS (whole node, last {} s, by kernel drop reason; where: interface class)",
        t.seconds
    );
    if t.drops.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for r in t.drops.iter().take(MAX_ROWS) {
        let _ = writeln!(
            o,
            "  {:<28} {:>10}  ({})",
            r.reason,
            r.count,
            super::flows_text::class_breakdown(&r.by_class)
        );
    }
    let _ = writeln!(o, "  TCP retransmissions: {}", t.tcp_retransmits);
    for f in &t.dropped_flows {
        let fl = &f.flow;
        let _ = writeln!(
            o,
            "  dropped flow: proto {} {}:{} -> {}:{} on {}: {} of {} packets ({})",
            fl.proto,
            fl.src,
            fl.sport,
            fl.dst,
            fl.dport,
            f.iface,
            fl.drops,
            fl.packets,
            f.drop_reason.as_deref().unwrap_or("reason unknown")
        );
    }
    if !t.mtu_correlation.is_empty() {
        let _ = writeln!(o, "\nMTU SIGNALS");
        for line in &t.mtu_correlation {
            let _ = writeln!(o, "  {line}");
        }
    }
    for n in &t.notes {
        let _ = writeln!(o, "  note: {n}");
    }
}

fn input_notes(o: &mut String, a: &Analysis) {
    if a.input_notes.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nINPUT");
    for n in &a.input_notes {
        let _ = writeln!(o, "  {n}");
    }
}

/// `agent check`: the findings and the summary line, nothing else.
pub fn check_text(a: &Analysis) -> String {
    let mut o = String::new();
    match &a.verification {
        Some(v) => {
            findings(&mut o, v, a.daemon.as_ref());
            daemon(&mut o, a);
        }
        None => {
            let _ = writeln!(
                o,
                "node {}: no Calico dataplane found on this node",
                a.diag.node
            );
        }
    }
    input_notes(&mut o, a);
    summary(&mut o, a);
    o
}

fn summary(o: &mut String, a: &Analysis) {
    let d = &a.diag;
    let g = &d.routes;
    let modes: Vec<&str> = d.modes.iter().map(|m| m.name()).collect();
    let (crit, warn) = a.verification.as_ref().map_or((0, 0), |v| {
        let n = |s: Severity| v.findings.iter().filter(|f| f.severity == s).count();
        (n(Severity::Critical), n(Severity::Warning))
    });
    let _ = writeln!(
        o,
        "\nsummary: node {} | {} | {} tunnel(s), {} local block(s), {} remote block route(s), {} workload(s) | {crit} critical, {warn} warning",
        d.node,
        if modes.is_empty() {
            "no Calico".to_string()
        } else {
            modes.join(" + ")
        },
        d.tunnels.len(),
        g.local_blackholes.len(),
        g.remote_via_tunnel.len() + g.remote_via_underlay.len(),
        d.workloads.len()
    );
}

/// What the running daemon adds: how fresh the answer is, what waits in the grace window,
/// and the BGP sessions' flap counts (only time shows those).
fn daemon(o: &mut String, a: &Analysis) {
    let Some(d) = &a.daemon else {
        return;
    };
    let age_ms = crate::pipeline::now_ms().saturating_sub(d.verified_at_ms);
    let _ = writeln!(
        o,
        "
AGENT (answered by `agent run`, up {}): verified {age_ms} ms ago; grace window {} s, {} finding(s) inside it; {} netlink event(s), {} resync(s), {} overrun(s); eBPF {}",
        duration(d.uptime_seconds),
        d.grace_seconds,
        d.pending,
        d.netlink_events,
        d.resyncs,
        d.overruns,
        d.ebpf
    );
    for (session, flaps) in &d.bgp_flaps {
        let _ = writeln!(
            o,
            "  BGP {session}: {flaps} state change(s) in the flap window"
        );
    }
}

/// `3h12m`, `4m05s`, `17s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Findings, most severe first, each with expected vs actual and the next step; with a
/// daemon's answer, also how long each has been there.
pub fn findings(o: &mut String, v: &Verification, daemon: Option<&crate::analysis::DaemonInfo>) {
    let basis = if v.with_datastore {
        "against the datastore"
    } else {
        "inferred from the node, no datastore"
    };
    let _ = writeln!(o, "\nFINDINGS ({}; {basis})", v.findings.len());
    if v.findings.is_empty() {
        let _ = writeln!(o, "  none: the dataplane matches what Felix programs");
    }
    for f in &v.findings {
        let _ = writeln!(o, "  {}  {}  {}", f.severity.tag(), f.check, f.subject);
        let _ = writeln!(o, "        expected: {}", f.expected);
        let _ = writeln!(o, "        actual:   {}", f.actual);
        let _ = writeln!(o, "        hint:     {}", f.hint);
        if let Some(d) = daemon.filter(|_| f.since > 0) {
            let age = (d.verified_at_ms / 1000).saturating_sub(f.since);
            let _ = writeln!(o, "        since:    {} ago", duration(age));
        }
    }
    if !v.skipped.is_empty() {
        let need_ds = v
            .skipped
            .iter()
            .filter(|s| s.reason.contains("datastore"))
            .count();
        let _ = writeln!(
            o,
            "  {} check(s) not run{} (--json lists them with reasons)",
            v.skipped.len(),
            if need_ds > 0 {
                format!(", {need_ds} of them need --datastore")
            } else {
                String::new()
            }
        );
    }
    for n in &v.notes {
        let _ = writeln!(o, "  note: {n}");
    }
}

fn section(o: &mut String, title: &str, routes: &[Route]) {
    let _ = writeln!(o, "  {title} ({})", routes.len());
    for r in routes.iter().take(MAX_ROWS) {
        let _ = writeln!(o, "    {}", r.display());
    }
    elided(o, routes.len());
}

fn elided(o: &mut String, n: usize) {
    if n > MAX_ROWS {
        let _ = writeln!(o, "    … {} more (use --json for all)", n - MAX_ROWS);
    }
}

fn opt(v: Option<u8>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// Policy-only on the AWS VPC CNI: the ENIs, their tables and rp_filter, the SNAT state and
/// each pod's route and rules.
fn vpc_cni(o: &mut String, v: &crate::observed::vpc_cni::VpcCni) {
    let _ = writeln!(
        o,
        "\nAWS VPC CNI (it routes the pods; Felix {})",
        match v.felix_dispatches {
            Some(true) => "enforces policy on eni+",
            Some(false) => "has NO eni+ dispatch: no policy",
            None => "dispatch not read: nftables mode or iptables unreadable",
        }
    );
    let rp = |x: Option<u8>| x.map_or("?".to_string(), |x| x.to_string());
    if let Some(e) = &v.primary_eni {
        let _ = writeln!(
            o,
            "  primary ENI {} {} (main table)  rp_filter {} (all {})",
            e.name,
            e.address.map(|a| a.to_string()).unwrap_or_default(),
            rp(e.rp_filter),
            rp(v.rp_filter_all)
        );
    }
    for e in &v.secondary_enis {
        let _ = writeln!(
            o,
            "  ENI {} {} table {}  rp_filter {}",
            e.name,
            e.address.map(|a| a.to_string()).unwrap_or_default(),
            e.table,
            rp(e.rp_filter)
        );
    }
    for t in &v.tables {
        let _ = writeln!(
            o,
            "  table {}: {} ({} route(s), {} rule(s) look it up)",
            t.table,
            t.default_route.as_deref().unwrap_or("NO DEFAULT ROUTE"),
            t.routes,
            t.rules
        );
    }
    let s = &v.snat;
    let snat = if !s.chain {
        "AWS-SNAT-CHAIN-0 ABSENT".to_string()
    } else if s.external() {
        "external SNAT (AWS-SNAT-CHAIN-0 empty)".to_string()
    } else {
        format!(
            "AWS-SNAT-CHAIN-0 in {} ({} rule(s), {}){}",
            s.backend.as_deref().unwrap_or("iptables"),
            s.chain_rules,
            if s.hooked { "hooked" } else { "NOT HOOKED" },
            s.snat_to
                .as_ref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default()
        )
    };
    let _ = writeln!(o, "  SNAT: {snat}");
    let _ = writeln!(
        o,
        "  connmark: {}   {}",
        s.connmark.as_deref().unwrap_or("none"),
        v.fwmark_rule.as_deref().unwrap_or("no 1024 fwmark rule")
    );
    let _ = writeln!(o, "  pods ({}): IP, route in main, rules", v.pods.len());
    for p in v.pods.iter().take(MAX_ROWS) {
        let _ = writeln!(o, "    {}", p.summary());
    }
    elided(o, v.pods.len());
    if !v.veths_without_route.is_empty() {
        let _ = writeln!(
            o,
            "  veths without a route: {}",
            v.veths_without_route.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::{self, DaemonInfo},
        verify::{CheckId, Finding, Policy, testutil::healthy},
    };

    fn with_daemon() -> Analysis {
        let (e, o) = healthy();
        let mut a = analysis::analyse(&o, Some(&e), &Policy::default());
        let v = a.verification.as_mut().expect("verified");
        let mut f = Finding::new(CheckId::RouteMissing, Severity::Critical, "10.244.1.0/26");
        f.since = 1_000;
        v.findings.push(f);
        a.daemon = Some(DaemonInfo {
            uptime_seconds: 3_725,
            verified_at_ms: 1_125_000,
            grace_seconds: 5.0,
            pending: 1,
            bgp_flaps: [("Mesh_10_99_0_12".to_string(), 4)].into(),
            ebpf: "attached to 5 interface(s)".into(),
            ..DaemonInfo::default()
        });
        a
    }

    #[test]
    fn a_daemon_answer_shows_finding_ages_freshness_and_flaps() {
        let text = check_text(&with_daemon());
        assert!(text.contains("        since:    2m05s ago"), "{text}");
        assert!(
            text.contains("AGENT (answered by `agent run`, up 1h02m)"),
            "{text}"
        );
        assert!(
            text.contains("grace window 5 s, 1 finding(s) inside it"),
            "{text}"
        );
        assert!(
            text.contains("BGP Mesh_10_99_0_12: 4 state change(s)"),
            "{text}"
        );
    }

    #[test]
    fn a_one_shot_answer_has_no_daemon_section() {
        let mut a = with_daemon();
        a.daemon = None;
        let text = check_text(&a);
        assert!(!text.contains("AGENT ("), "{text}");
        assert!(!text.contains("since:"), "{text}");
    }
}
