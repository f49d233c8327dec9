//! Human rendering of an [`Analysis`]: findings first, then the dataplane section by section,
//! then a summary and the verdict. Every line fits 80 columns (long ones wrap, indented);
//! long lists are elided.

use std::fmt::Write as _;

use super::wrap;
use crate::{
    analysis::Analysis,
    flows::{reasons::DropClass, report::DropRow},
    observed::Route,
    verify::{NotRun, Skipped, Verdict, Verification, capabilities_named},
};

/// Rows shown per route group before eliding the rest.
const MAX_ROWS: usize = 12;

pub fn text(a: &Analysis) -> String {
    let d = &a.diag;
    let mut o = String::new();
    if !d.calico_found {
        wrap::write(&mut o, "", "  ", &no_calico(a));
        if !d.missing_capabilities.is_empty() {
            wrap::write(
                &mut o,
                "  ",
                "    ",
                &format!(
                    "(in what could be read: running without {}, so Felix's chains could not be \
                     looked at)",
                    d.missing_capabilities.join(", ")
                ),
            );
        }
        wrap::write(
            &mut o,
            "  ",
            "    ",
            "(no Calico tunnel devices, cali* workload interfaces, Felix chains, Calico routes or \
             eBPF maps)",
        );
        for u in d.unavailable.iter().filter(|u| !u.kind.live_service()) {
            wrap::write(
                &mut o,
                "  ",
                "    ",
                &format!("not observable: {}: {}", u.source, u.reason),
            );
        }
        input_notes(&mut o, a);
        return o;
    }
    let modes: Vec<&str> = d.modes.iter().map(|m| m.name()).collect();
    identity(&mut o, a);
    let mode = if modes.is_empty() {
        "unknown".to_string()
    } else {
        modes.join(" + ")
    };
    wrap::write(&mut o, "", "  ", &format!("node {}  mode: {mode}", d.node));
    for e in &d.evidence {
        wrap::write(&mut o, "  · ", "    ", e);
    }

    if let Some(v) = &a.verification {
        findings(&mut o, a, v);
        daemon(&mut o, a);
    }
    traffic(&mut o, a);
    if !d.anomalies.is_empty() {
        let _ = writeln!(o, "\nLIMITS OF THIS REPORT");
        for an in &d.anomalies {
            wrap::write(
                &mut o,
                &format!("  {}  ", an.severity.tag()),
                "        ",
                &format!("{}: {}", an.subject, an.message),
            );
        }
    }

    let _ = writeln!(o, "\nTUNNELS");
    if d.tunnels.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for t in &d.tunnels {
        let _ = writeln!(
            o,
            "  {:<15} {:<5} mtu {:<5} {}",
            t.name,
            if t.up { "up" } else { "DOWN" },
            t.mtu,
            t.addresses.join(",")
        );
        let mut details = Vec::new();
        if let Some(vni) = t.vni {
            details.push(format!("vni {vni}"));
        }
        if let Some(p) = t.port {
            details.push(format!("port {p}"));
        }
        if let Some(l) = &t.local {
            details.push(format!("local {l}"));
        }
        if let Some(p) = &t.parent {
            details.push(format!("dev {p}"));
        }
        if let Some(learning) = t.learning {
            details.push(if learning { "learning" } else { "nolearning" }.into());
        }
        if let Some(m) = &t.mac {
            details.push(format!("mac {m}"));
        }
        if !details.is_empty() {
            wrap::write(&mut o, "    ", "    ", &details.join(" "));
        }
    }

    let g = &d.routes;
    let _ = writeln!(
        o,
        "\nROUTES (Calico-owned; {} others not shown)",
        g.not_calico
    );
    if g.has_ipv6() {
        // A dual-stack node: each family's blocks, so a family with none stands out.
        for (name, c) in ["IPv4", "IPv6"].iter().zip(g.per_family()) {
            wrap::write(
                &mut o,
                "  ",
                "    ",
                &format!(
                    "{name}: {} local block(s), {} remote block route(s), {} workload \
                     route(s)",
                    c.local_blocks, c.remote_blocks, c.workload_routes
                ),
            );
        }
    }
    section(&mut o, "local block blackholes", &g.local_blackholes);
    section(&mut o, "remote blocks via tunnel", &g.remote_via_tunnel);
    section(&mut o, "remote blocks via underlay", &g.remote_via_underlay);
    section(&mut o, "tunnel host routes", &g.tunnel_hosts);
    section(&mut o, "workload routes", &g.workload);
    if !g.other_tables.is_empty() {
        section(&mut o, "other tables", &g.other_tables);
    }
    super::bgp_text::sessions(&mut o, a);

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
            wrap::write(
                &mut o,
                "  fdb   ",
                "        ",
                &format!("{} dev {}{dst} {}", f.mac, f.dev, f.state.to_lowercase()),
            );
        }
        for n in &d.vxlan_neighbours {
            wrap::write(
                &mut o,
                "  neigh ",
                "        ",
                &format!(
                    "{} dev {} lladdr {} {}",
                    n.destination,
                    n.dev,
                    n.lladdr.as_deref().unwrap_or("-"),
                    n.state
                ),
            );
        }
        if d.vxlan_fdb.is_empty() && d.vxlan_neighbours.is_empty() {
            let _ = writeln!(o, "  none");
        }
    }

    let _ = writeln!(o, "\nWORKLOADS ({})", d.workloads.len());
    for w in d.workloads.iter().take(MAX_ROWS) {
        wrap::write(
            &mut o,
            "  ",
            "      ",
            &format!(
                "{:<15} {:<5} mtu {:<5} {}{}",
                w.iface,
                if w.up { "up" } else { "DOWN" },
                w.mtu,
                w.routes.join(","),
                if w.proxy_arp == Some(1) {
                    ""
                } else {
                    "  proxy_arp off"
                }
            ),
        );
    }
    elided(&mut o, d.workloads.len());
    if let Some(v) = &d.vpc_cni {
        vpc_cni(&mut o, v);
    }

    wireguard(&mut o, &d.wireguard);

    let _ = writeln!(o, "\nFELIX RULES (backend in use: {})", rules_backend(a));
    for s in &d.felix_chains {
        let _ = writeln!(
            o,
            "  {:<16} {} chains, {} rules",
            s.source, s.felix_chains, s.felix_rules
        );
        for h in &s.hooks {
            wrap::write(&mut o, "    ", "      ", h);
        }
    }

    if let Some(b) = &d.calico_bpf {
        calico_bpf(&mut o, b);
    }

    let s = &d.sysctls;
    let _ = writeln!(o, "\nSYSCTLS");
    wrap::write(
        &mut o,
        "  ",
        "    ",
        &format!(
            "ip_forward={}  rp_filter all={} default={}{}",
            opt(s.ip_forward),
            opt(s.rp_filter_all),
            opt(s.rp_filter_default),
            s.conntrack
                .map(|(c, m)| format!("  conntrack {c}/{m}"))
                .unwrap_or_default()
        ),
    );
    if let Some(b) = s.conntrack_breakdown.as_ref().filter(|b| !b.is_empty()) {
        wrap::write(&mut o, "  conntrack: ", "    ", b);
    }
    if let Some(c) = &s.calico_conntrack {
        wrap::write(&mut o, "  calico eBPF conntrack ", "    ", c);
    }
    if !s.rp_filter_strict.is_empty() {
        wrap::write(
            &mut o,
            "  strict rp_filter on: ",
            "    ",
            &s.rp_filter_strict.join(", "),
        );
    }
    if !s.proxy_arp_off.is_empty() {
        wrap::write(
            &mut o,
            "  proxy_arp off on: ",
            "    ",
            &s.proxy_arp_off.join(", "),
        );
    }

    input_notes(&mut o, a);
    summary(&mut o, a);
    o
}

/// Felix's eBPF state: maps with versions and sizes, attached links, routes, counters.
fn calico_bpf(o: &mut String, b: &crate::diag::bpf::BpfSummary) {
    let _ = writeln!(
        o,
        "\nCALICO eBPF ({} map(s) pinned, {} program link(s) pinned)",
        b.maps.len(),
        b.attached.len()
    );
    let maps: Vec<String> = b
        .maps
        .iter()
        .map(|m| {
            let sizes = if m.kind.is_empty() {
                "unreadable".to_string()
            } else {
                format!("{} key {} value {}", m.kind, m.key_size, m.value_size)
            };
            let fill = m
                .entries
                .map(|n| format!(", {n} of {}", m.max_entries))
                .unwrap_or_default();
            format!("{} v{} ({sizes}{fill})", m.name, m.version)
        })
        .collect();
    wrap::write(o, "  maps: ", "    ", &maps.join(", "));
    if !b.attached.is_empty() {
        wrap::write(o, "  attached: ", "    ", &b.attached.join(", "));
    }
    if let Some(kinds) = &b.route_kinds {
        let total: usize = kinds.values().sum();
        let by: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        wrap::write(
            o,
            "  routes: ",
            "    ",
            &format!(
                "{total} entr{}{}{}",
                if total == 1 { "y" } else { "ies" },
                if by.is_empty() { "" } else { ": " },
                by.join(", ")
            ),
        );
        for r in &b.routes_shown {
            let target = match (r.next_hop, r.ifindex) {
                (Some(h), _) => format!(" via {h}"),
                (None, Some(i)) => format!(" ifindex {i}"),
                (None, None) => String::new(),
            };
            wrap::write(
                o,
                "    ",
                "      ",
                &format!("{} {}{target}", r.destination, r.flag_names().join(",")),
            );
        }
        let more = total.saturating_sub(b.routes_shown.len());
        if more > 0 {
            let _ = writeln!(
                o,
                "    … {more} more (`calico-node -bpf routes dump` lists all)"
            );
        }
    }
    for why in &b.not_decoded {
        wrap::write(o, "  not observable: ", "    ", why);
    }
    if let Some(map) = &b.counters_map {
        let _ = writeln!(o, "  counters ({map}):");
        if b.counters.is_empty() {
            let _ = writeln!(o, "    none");
        }
        for c in &b.counters {
            wrap::write(
                o,
                "    ",
                "      ",
                &format!(
                    "{:<28} {:<8} {:<9} {}",
                    c.reason, c.hook, c.iface_class, c.packets
                ),
            );
        }
    }
}

/// "none found" only when the rules were read: unreadable rules are unknown, not absent.
fn rules_backend(a: &Analysis) -> String {
    use crate::observed::Source;
    if let Some(b) = &a.diag.rules_backend {
        return b.clone();
    }
    let unread: Vec<&str> = a
        .diag
        .unavailable
        .iter()
        .filter(|u| matches!(u.kind, Source::Iptables | Source::Nftables))
        .map(|u| u.source.as_str())
        .collect();
    if unread.is_empty() {
        "none found".into()
    } else {
        "unknown, rules not readable".into()
    }
}

/// `node X: no Calico dataplane found on this node` (or in the bundle analysed).
fn no_calico(a: &Analysis) -> String {
    match &a.bundle {
        Some(dir) => format!(
            "node {}: no Calico dataplane found in bundle {dir}",
            a.diag.node
        ),
        None => format!(
            "node {}: no Calico dataplane found on this node",
            a.diag.node
        ),
    }
}

/// The identity slip, first: every finding below it would be someone else's.
fn identity(o: &mut String, a: &Analysis) {
    let Some(m) = &a.identity else {
        return;
    };
    wrap::write(o, "", "  ", &m.to_string());
    wrap::write(
        o,
        "  ",
        "    ",
        &format!(
            "(the dataplane holds {}'s {}; run again with --node-name {})",
            m.looks_like,
            m.evidence.join(", "),
            m.looks_like
        ),
    );
}

fn traffic(o: &mut String, a: &Analysis) {
    let t = match (&a.traffic, &a.traffic_unavailable) {
        (Some(t), _) => t,
        (None, Some(why)) => {
            let _ = writeln!(o);
            wrap::write(o, "DROPS unavailable: ", "  ", why);
            return;
        }
        (None, None) => return,
    };
    let _ = writeln!(
        o,
        "\nDROPS (whole node, last {} s, by kernel drop reason)",
        t.seconds
    );
    drop_rows(o, &t.drops);
    let _ = writeln!(o, "  TCP retransmissions: {}", t.tcp_retransmits);
    for f in &t.dropped_flows {
        let fl = &f.flow;
        wrap::write(
            o,
            "  dropped flow: ",
            "    ",
            &format!(
                "proto {} {}:{} -> {}:{} on {}: {} of {} packets ({})",
                fl.proto,
                fl.src,
                fl.sport,
                fl.dst,
                fl.dport,
                f.iface,
                fl.drops,
                fl.packets,
                f.drop_reason.as_deref().unwrap_or("reason unknown")
            ),
        );
    }
    if !t.mtu_correlation.is_empty() {
        let _ = writeln!(o, "\nMTU SIGNALS");
        for line in &t.mtu_correlation {
            wrap::write(o, "  ", "    ", line);
        }
    }
    for n in &t.notes {
        wrap::write(o, "  note: ", "    ", n);
    }
}

/// Drops per reason, the ones worth a look first, each with where it happened and what it
/// means; shared by `diag` and `flows`.
pub fn drop_rows(o: &mut String, drops: &[DropRow]) {
    if drops.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for class in [DropClass::WorthALook, DropClass::Expected] {
        let rows: Vec<&DropRow> = drops.iter().filter(|r| r.assessment == class).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "  {}:",
            match class {
                DropClass::WorthALook => "worth a look",
                DropClass::Expected => "expected on a healthy node",
            }
        );
        for r in rows.iter().take(MAX_ROWS) {
            wrap::write(
                o,
                &format!("    {:<24} {:>9}  ", r.reason, r.count),
                "      ",
                &super::flows_text::class_breakdown(&r.by_class),
            );
            if let Some(m) = r.meaning {
                wrap::write(o, "      ", "      ", m);
            }
        }
        elided(o, rows.len());
    }
}

fn input_notes(o: &mut String, a: &Analysis) {
    if a.input_notes.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nINPUT");
    for n in &a.input_notes {
        wrap::write(o, "  ", "    ", n);
    }
}

/// `agent check`: the findings and the summary line, nothing else.
pub fn check_text(a: &Analysis) -> String {
    let mut o = String::new();
    identity(&mut o, a);
    match &a.verification {
        Some(v) => {
            findings(&mut o, a, v);
            daemon(&mut o, a);
        }
        None => wrap::write(&mut o, "", "  ", &no_calico(a)),
    }
    input_notes(&mut o, a);
    summary(&mut o, a);
    o
}

fn summary(o: &mut String, a: &Analysis) {
    let d = &a.diag;
    let g = &d.routes;
    let modes: Vec<&str> = d.modes.iter().map(|m| m.name()).collect();
    let (crit, warn) = a
        .verification
        .as_ref()
        .map_or((0, 0), |v| (v.counts().critical, v.counts().warning));
    let _ = writeln!(o);
    wrap::write(
        o,
        "summary: ",
        "  ",
        &format!(
            "node {} | {} | {} tunnel(s), {} local block(s), {} remote block route(s), {} \
             workload(s) | {crit} critical, {warn} warning",
            d.node,
            if modes.is_empty() && !d.calico_found {
                "no Calico".to_string()
            } else if modes.is_empty() {
                "mode unknown".to_string()
            } else {
                modes.join(" + ")
            },
            d.tunnels.len(),
            g.local_blackholes.len(),
            g.remote_via_tunnel.len() + g.remote_via_underlay.len(),
            d.workloads.len()
        ),
    );
    if g.has_ipv6() {
        let [v4, v6] = g.per_family();
        wrap::write(
            o,
            "families: ",
            "  ",
            &format!(
                "IPv4 {} local / {} remote block(s) | IPv6 {} local / {} remote block(s)",
                v4.local_blocks, v4.remote_blocks, v6.local_blocks, v6.remote_blocks
            ),
        );
    }
    wrap::write(o, "verdict: ", "  ", &verdict_line(a));
}

/// The verdict in one sentence: what `check`'s exit code means, and on what it rests.
pub fn verdict_line(a: &Analysis) -> String {
    let skipped = |k: NotRun| -> Vec<&Skipped> {
        a.verification
            .as_ref()
            .map(|v| v.skipped.iter().filter(|s| s.kind == k).collect())
            .unwrap_or_default()
    };
    match a.verdict() {
        Verdict::Clean => {
            "clean: every check that applies ran; the dataplane matches what Felix programs".into()
        }
        Verdict::Drift => {
            let c = a
                .verification
                .as_ref()
                .map(Verification::counts)
                .unwrap_or_default();
            format!(
                "drift: {} critical, {} warning finding(s)",
                c.critical, c.warning
            )
        }
        Verdict::Incomplete => {
            let s = skipped(NotRun::NotInInput);
            format!(
                "clean for what {} holds: {} check(s) need more input ({})",
                if a.bundle.is_some() {
                    "the bundle"
                } else {
                    "the input"
                },
                s.len(),
                missing(&s)
            )
        }
        Verdict::Unverifiable => match (&a.identity, &a.verification) {
            (Some(m), _) => format!("could not verify: {m}"),
            (None, None) => format!("could not verify: {}", no_calico(a)),
            (None, Some(_)) => {
                let s = skipped(NotRun::CouldNotObserve);
                format!(
                    "could not verify: {} check(s) could not observe ({})",
                    s.len(),
                    unobserved(&s)
                )
            }
        },
    }
}

/// What the skipped checks needed, each once.
fn missing(s: &[&Skipped]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for m in s.iter().flat_map(|s| s.missing.split(", ")) {
        if !m.is_empty() && !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        "see --json".into()
    } else {
        out.join(", ")
    }
}

/// What the running daemon adds: how fresh the answer is, what waits in the grace window,
/// and the BGP sessions' flap counts (only time shows those).
fn daemon(o: &mut String, a: &Analysis) {
    let Some(d) = &a.daemon else {
        return;
    };
    let age_ms = crate::pipeline::now_ms().saturating_sub(d.verified_at_ms);
    let _ = writeln!(o);
    wrap::write(
        o,
        "",
        "  ",
        &format!(
            "AGENT (answered by `agent run`, up {}): verified {age_ms} ms ago; grace window {} s, \
             {} finding(s) inside it; {} netlink event(s), {} resync(s), {} overrun(s); eBPF {}",
            duration(d.uptime_seconds),
            d.grace_seconds,
            d.pending,
            d.netlink_events,
            d.resyncs,
            d.overruns,
            d.ebpf
        ),
    );
    if let Some(r) = &d.report {
        report_line(o, r);
    }
    for (session, flaps) in &d.bgp_flaps {
        wrap::write(
            o,
            "  ",
            "    ",
            &format!("BGP {session}: {flaps} state change(s) in the flap window"),
        );
    }
}

/// Where the reports stand: delivered, or waiting in the spool and why.
fn report_line(o: &mut String, r: &crate::report::push::PushStatus) {
    let now = crate::pipeline::now_ms();
    let ago = |ms: u64| duration(now.saturating_sub(ms) / 1000);
    let mut line = format!("reports to {}: ", r.endpoint);
    if r.spooled == 0 {
        line.push_str("all delivered");
    } else {
        let _ = write!(
            line,
            "{} waiting in the spool ({} KiB)",
            r.spooled,
            r.spool_bytes.div_ceil(1024)
        );
    }
    match (r.last_result.as_str(), r.last_delivered_ms) {
        ("", _) => line.push_str("; none sent yet"),
        ("ok", at) => {
            let _ = write!(line, "; last delivered {} ago", ago(at));
        }
        (result, at) => {
            let _ = write!(
                line,
                "; last attempt {} ago: {result}",
                ago(r.last_attempt_ms)
            );
            if !r.last_error.is_empty() {
                let _ = write!(line, " ({})", r.last_error);
            }
            if at > 0 {
                let _ = write!(line, "; last delivered {} ago", ago(at));
            }
        }
    }
    if r.dropped > 0 {
        let _ = write!(line, "; {} dropped", r.dropped);
    }
    wrap::write(o, "  ", "    ", &line);
}

/// Each WireGuard device, its rule, and one line per peer: who, where, how many allowed IPs,
/// how long since the last handshake.
fn wireguard(o: &mut String, devices: &[crate::diag::WireGuard]) {
    if devices.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nWIREGUARD");
    for w in devices {
        wrap::write(
            o,
            "  ",
            "    ",
            &format!(
                "{}  port {}  fwmark {}  {} peer(s), {} with a handshake",
                w.name,
                w.listen_port
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                w.fwmark.as_deref().unwrap_or("-"),
                w.peers,
                w.peers_with_handshake
            ),
        );
        for r in &w.rules {
            wrap::write(
                o,
                "    rule ",
                "      ",
                &format!(
                    "{}  ({} route(s) in its table)",
                    r.replace('\t', " "),
                    w.table_routes
                ),
            );
        }
        for p in w.peer_details.iter().take(MAX_ROWS) {
            let who = p.node.clone().unwrap_or_else(|| {
                let short: String = p.public_key.chars().take(10).collect();
                format!("key {short}… (no node)")
            });
            wrap::write(
                o,
                "    ",
                "      ",
                &format!(
                    "{who}  {}  {} allowed IP(s)  handshake {}",
                    p.endpoint.as_deref().unwrap_or("no endpoint"),
                    p.allowed_ips,
                    p.handshake_age_secs
                        .map_or_else(|| "never".to_string(), |s| format!("{} ago", duration(s)))
                ),
            );
        }
        elided(o, w.peer_details.len());
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
/// daemon's answer, also how long each has been there. Then what did not run, grouped.
pub fn findings(o: &mut String, a: &Analysis, v: &Verification) {
    let basis = if v.with_datastore {
        "against the datastore"
    } else {
        "inferred from the node, no datastore"
    };
    let _ = writeln!(o, "\nFINDINGS ({}; {basis})", v.findings.len());
    if let Some(m) = &a.identity {
        wrap::write(
            o,
            "  ",
            "    ",
            &format!(
                "not shown: they compare this node with {}'s expected state (--json has them)",
                m.named
            ),
        );
    } else {
        if v.findings.is_empty() {
            let _ = writeln!(
                o,
                "  {}",
                match a.verdict() {
                    Verdict::Clean => "none: the dataplane matches what Felix programs",
                    _ => "none in what could be checked (see the verdict below)",
                }
            );
        }
        let since = a.daemon.as_ref();
        for f in &v.findings {
            wrap::write(
                o,
                &format!("  {}  ", f.severity.tag()),
                "        ",
                &format!("{}  {}", f.check, f.subject),
            );
            wrap::write(o, "        expected: ", "                  ", &f.expected);
            wrap::write(o, "        actual:   ", "                  ", &f.actual);
            wrap::write(o, "        hint:     ", "                  ", &f.hint);
            if let Some(d) = since.filter(|_| f.since > 0) {
                let age = (d.verified_at_ms / 1000).saturating_sub(f.since);
                let _ = writeln!(o, "        since:    {} ago", duration(age));
            }
        }
    }
    not_run(o, v);
    for n in &v.notes {
        wrap::write(o, "  note: ", "    ", n);
    }
}

/// What could not be observed, and the capabilities that would let it be.
fn unobserved(s: &[&Skipped]) -> String {
    let caps = capabilities_named(s.iter().map(|s| s.reason.as_str()));
    if caps.is_empty() {
        missing(s)
    } else {
        format!("{}: needs {}", missing(s), caps.join(", "))
    }
}

/// The checks that did not run, grouped by why, in one or two lines.
fn not_run(o: &mut String, v: &Verification) {
    if v.skipped.is_empty() {
        return;
    }
    let mut parts = Vec::new();
    for kind in [
        NotRun::CouldNotObserve,
        NotRun::NotInInput,
        NotRun::NotApplicable,
    ] {
        let s: Vec<&Skipped> = v.skipped.iter().filter(|s| s.kind == kind).collect();
        if s.is_empty() {
            continue;
        }
        parts.push(match kind {
            NotRun::CouldNotObserve => {
                format!("{} could not observe ({})", s.len(), unobserved(&s))
            }
            NotRun::NotInInput => format!("{} need input not given ({})", s.len(), missing(&s)),
            NotRun::NotApplicable => format!("{} not applicable here", s.len()),
        });
    }
    wrap::write(
        o,
        "  not run: ",
        "    ",
        &format!("{}; --json has each reason", parts.join("; ")),
    );
}

fn section(o: &mut String, title: &str, routes: &[Route]) {
    let _ = writeln!(o, "  {title} ({})", routes.len());
    for r in routes.iter().take(MAX_ROWS) {
        wrap::write(o, "    ", "      ", &r.display());
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
        verify::{CheckId, Finding, Policy, Severity, testutil::healthy},
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

    /// Issue 14: each peer named by its Node, with endpoint, allowed IPs and handshake age,
    /// in 80 columns.
    #[test]
    fn wireguard_peers_are_listed_by_node_with_their_handshake_age() {
        use crate::{
            desired::expected::{ExpectedWireguard, WireguardPeer},
            observed::wireguard::{WgDevice, WgPeer},
        };
        let (mut e, mut o) = healthy();
        o.captured_at = 1_700_000_100;
        e.wireguard = Some(ExpectedWireguard {
            family: 4,
            device: "wireguard.cali".into(),
            mtu: Some(1440),
            address: None,
            listen_port: 51820,
            rule_priority: 99,
            table: 1,
            peers: vec![WireguardPeer {
                node: "node-b-with-a-rather-long-name.eu-west-1.compute.internal".into(),
                public_key: "KEYB".into(),
                allowed_ips: Vec::new(),
                endpoint: None,
            }],
            not_programmed: Vec::new(),
            tolerated_keys: Vec::new(),
            peers_complete: true,
        });
        o.wireguard = vec![WgDevice {
            name: "wireguard.cali".into(),
            listen_port: Some(51820),
            fwmark: Some("0x200000".into()),
            public_key: None,
            peers: vec![
                WgPeer {
                    public_key: "KEYB".into(),
                    endpoint: Some("10.99.0.12:51820".into()),
                    allowed_ips: vec!["10.244.1.0/26".into(), "10.244.1.0/32".into()],
                    latest_handshake: Some(1_700_000_035),
                    ..WgPeer::default()
                },
                WgPeer {
                    public_key: "UNKNOWNKEY0123456789".into(),
                    ..WgPeer::default()
                },
            ],
        }];
        let a = analysis::analyse(&o, Some(&e), &Policy::default());
        let t = text(&a);
        for l in t.lines() {
            assert!(l.chars().count() <= 80, "{l:?}");
        }
        let flat = t.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(
                "WIREGUARD wireguard.cali port 51820 fwmark 0x200000 2 peer(s), 1 with a handshake"
            ),
            "{t}"
        );
        assert!(
            flat.contains(
                "node-b-with-a-rather-long-name.eu-west-1.compute.internal 10.99.0.12:51820 \
                 2 allowed IP(s) handshake 1m05s ago"
            ),
            "{t}"
        );
        assert!(
            flat.contains("key UNKNOWNKEY… (no node) no endpoint 0 allowed IP(s) handshake never"),
            "{t}"
        );
    }

    #[test]
    fn a_dual_stack_node_shows_each_familys_blocks() {
        let (e, o) = crate::verify::testutil::healthy_dual_stack();
        let a = analysis::analyse(&o, Some(&e), &Policy::default());
        let flat = text(&a).split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "IPv4: 1 local block(s), 1 remote block route(s), 1 workload route(s)",
            "IPv6: 1 local block(s), 1 remote block route(s), 1 workload route(s)",
            "fd00:244::/122",
            "fd00:244::40/122 via fd00:244::40 dev vxlan-v6.calico",
            "families: IPv4 1 local / 1 remote block(s) | IPv6 1 local / 1 remote block(s)",
        ] {
            assert!(flat.contains(want), "{want:?} not in {flat}");
        }
        for line in text(&a).lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        // An IPv4-only node's output has no family lines.
        let (e, o) = healthy();
        let a = analysis::analyse(&o, Some(&e), &Policy::default());
        assert!(!text(&a).contains("IPv6"));
    }

    #[test]
    fn a_daemon_answer_says_where_the_reports_stand() {
        let mut a = with_daemon();
        let now = crate::pipeline::now_ms();
        let status = crate::report::push::PushStatus {
            endpoint: "http://collector:4318".into(),
            spooled: 3,
            spool_bytes: 5000,
            last_result: "unreachable".into(),
            last_error: "connection refused".into(),
            last_attempt_ms: now - 2_000,
            last_delivered_ms: now - 65_000,
            dropped: 0,
        };
        if let Some(d) = a.daemon.as_mut() {
            d.report = Some(status.clone());
        }
        let flat = check_text(&a)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            flat.contains("reports to http://collector:4318: 3 waiting in the spool (5 KiB); last attempt 2s ago: unreachable (connection refused); last delivered 1m05s ago"),
            "{flat}"
        );
        if let Some(d) = a.daemon.as_mut() {
            d.report = Some(crate::report::push::PushStatus {
                spooled: 0,
                last_result: "ok".into(),
                last_delivered_ms: now - 1_000,
                ..status
            });
        }
        let flat = check_text(&a)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            flat.contains("all delivered; last delivered 1s ago"),
            "{flat}"
        );
    }

    #[test]
    fn a_daemon_answer_shows_finding_ages_freshness_and_flaps() {
        let text = check_text(&with_daemon());
        assert!(text.contains("        since:    2m05s ago"), "{text}");
        assert!(
            text.contains("AGENT (answered by `agent run`, up 1h02m)"),
            "{text}"
        );
        // Wrapped at 80 columns: read as the words it says.
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("grace window 5 s, 1 finding(s) inside it"),
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

    #[test]
    fn the_ebpf_section_lists_maps_routes_and_counters_within_80_columns() {
        use crate::observed::calico_bpf::{
            BpfRoute, CalicoBpf, CounterMap, Hook, IfaceCounters, PinnedMap,
        };
        let (e, mut o) = healthy();
        let map = |name: &str, version, kind: &str, value_size, entries| PinnedMap {
            name: name.into(),
            version,
            kind: kind.into(),
            key_size: 8,
            value_size,
            max_entries: 262_144,
            entries,
        };
        o.calico_bpf = Some(CalicoBpf {
            maps: vec![
                map("cali_counters6", 6, "PerCpuHash", 216, Some(1)),
                map("cali_v4_ct4", 4, "LruHash", 88, None),
                map("cali_v4_routes", 1, "LpmTrie", 8, Some(2)),
            ],
            attached: vec!["tcx/eth0_egress".into(), "tcx/eth0_ingress".into()],
            routes: Some(vec![
                BpfRoute {
                    destination: "10.244.0.5/32".parse().expect("cidr"),
                    flags: 0xd,
                    next_hop: None,
                    ifindex: Some(9),
                },
                BpfRoute {
                    destination: "10.244.1.0/26".parse().expect("cidr"),
                    flags: 0x445,
                    next_hop: Some([10, 99, 0, 12].into()),
                    ifindex: None,
                },
            ]),
            routes_v6: None,
            counters: Some(CounterMap {
                map: "cali_counters6".into(),
                interfaces: vec![IfaceCounters {
                    ifindex: 4242,
                    hook: Hook::Ingress,
                    counts: vec![("dropped_by_policy".into(), 3)],
                }],
            }),
        });
        let a = analysis::analyse(&o, Some(&e), &Policy::default());
        let text = text(&a);
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "CALICO eBPF (3 map(s) pinned, 2 program link(s) pinned)",
            "cali_v4_routes v1 (LpmTrie key 8 value 8, 2 of 262144)",
            "cali_v4_ct4 v4 (LruHash key 8 value 88)",
            "attached: tcx/eth0_egress, tcx/eth0_ingress",
            "routes: 2 entries: local workload 1, remote workload 1",
            "10.244.1.0/26 remote,workload,in-pool,tunneled,vxlan via 10.99.0.12",
            "10.244.0.5/32 local,workload,in-pool ifindex 9",
            "counters (cali_counters6): dropped_by_policy ingress other 3",
        ] {
            assert!(flat.contains(want), "{want} not in:\n{text}");
        }
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
    }
}
