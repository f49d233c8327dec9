//! Combining what every section of a bundle yielded into one [`ObservedDataplane`]: links
//! merged across `ip link` and `ip addr`, names resolved to indexes, the same object seen in
//! two dumps (`ip route show table all` and `ip -6 route …` overlap) kept once, and every
//! source nothing was found for listed as unavailable.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Debug,
    path::Path,
};

use super::{
    Bundle, LineNote, calicoctl_status,
    classify::{Format, Origin},
    fdb, iptables_dump, iptables_fragment, iptables_listing,
    link::{self, LinkBlock},
    neigh, nft_text, paste_quoting, route, rule,
    sections::Section,
    sysctl_text,
};
use crate::observed::{
    bird::BgpPeer,
    iptables::{Backend, IptablesDump},
    model::{
        Cause, FdbEntry, IpRule, Link, Neighbour, ObservedDataplane, Route, Source, Sysctls,
        TABLE_LOCAL, Unavailable,
    },
    nft::{self, NftRuleset},
    wireguard::{self, WgDevice},
};

const NOT_IN_BUNDLE: &str = "not in the bundle";

#[derive(Default)]
pub(super) struct Assembler {
    blocks: Vec<LinkBlock>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
    rules: Vec<IpRule>,
    sysctls: Option<Sysctls>,
    iptables: Vec<IptablesDump>,
    /// Parts of rulesets, merged per family and backend when the bundle is complete.
    iptables_fragments: Vec<IptablesDump>,
    /// Sessions from `calicoctl node status`, once one answered.
    bgp_peers: Option<Vec<BgpPeer>>,
    /// What calicoctl said instead of the sessions ("Error querying BIRD: …").
    bird_errors: Vec<String>,
    /// The same for `bird6`, from the "IPv6 BGP status" section.
    bgp6_peers: Option<Vec<BgpPeer>>,
    bird6_errors: Vec<String>,
    nft_json: Option<NftRuleset>,
    nft_text: Option<NftRuleset>,
    wireguard: Option<Vec<WgDevice>>,
    node_name: Option<String>,
    seen: BTreeSet<Format>,
    captured_at: u64,
    bundle: Bundle,
}

impl Assembler {
    pub fn note(&mut self, note: String) {
        self.bundle.notes.push(note);
    }

    /// Parses one section as `origin` says. `shown` names the file in notes; `mtime` is the
    /// file's modification time, the best estimate of when the bundle was taken.
    pub fn add(&mut self, path: &Path, shown: &str, section: &Section, origin: Origin, mtime: u64) {
        // Indentation a paste added (a list item, an issue template) is not the dump's own.
        let dedented = paste_quoting::dedent(&section.text);
        // Output piped through grep or head ended at the prompt, but not where the command's
        // did: its chains are not known to be whole.
        let ended = section.ended && !section.command.as_deref().is_some_and(|c| c.contains('|'));
        let mut text = dedented.as_str();
        let rejoined;
        let mut description = None;
        let mut notes = match origin.format {
            Format::IpRoute | Format::IpLink | Format::IpAddr => {
                let (joined, n) = if origin.format == Format::IpRoute {
                    paste_quoting::rejoin_routes(text)
                } else {
                    paste_quoting::rejoin_links(text)
                };
                rejoined = joined;
                text = rejoined.as_str();
                if n > 0 {
                    description = Some(format!("{n} line(s) the terminal wrapped were rejoined"));
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        notes.extend(match origin.format {
            Format::IpRoute => extend(&mut self.routes, route::parse(text, origin.family)),
            Format::IpLink | Format::IpAddr => extend(&mut self.blocks, link::parse(text)),
            Format::IpNeigh => extend(&mut self.neighbours, neigh::parse(text)),
            Format::BridgeFdb => extend(&mut self.fdb, fdb::parse(text)),
            Format::IpRule => extend(&mut self.rules, rule::parse(text, origin.family)),
            Format::IptablesSave if !iptables_fragment::is_partial(text) => {
                let dump = iptables_dump::parse(text, origin.backend, origin.family);
                let notes = line_notes(&dump.errors);
                self.iptables.push(dump);
                notes
            }
            Format::IptablesSave | Format::IptablesFragment => {
                // The header comment and the rules say the backend and family as for a whole
                // dump; the tables come from the fragment's own reading.
                let labels = iptables_dump::parse(text, origin.backend, origin.family);
                let dump = iptables_fragment::parse_ended(
                    text,
                    labels.backend,
                    labels.family,
                    origin.table,
                    ended,
                );
                description = Some(describe_fragment(&dump));
                let notes = line_notes(&dump.errors);
                self.iptables_fragments.push(dump);
                notes
            }
            Format::IptablesListing => {
                let dump = iptables_listing::parse(
                    text,
                    origin.backend,
                    origin.family.unwrap_or(4),
                    origin.table,
                    ended,
                );
                description = Some(describe_fragment(&dump));
                let notes = line_notes(&dump.errors);
                self.iptables_fragments.push(dump);
                notes
            }
            Format::CalicoctlStatus => {
                let (status, notes) = calicoctl_status::parse(text);
                description = Some(if status.answered {
                    let all = status.peers.iter().chain(&status.peers6);
                    let down = all.clone().filter(|p| !p.established()).count();
                    format!("{} BGP peer(s), {down} not Established", all.count())
                } else if status.bird_errors.is_empty() {
                    "no peer table".to_string()
                } else {
                    "BIRD did not answer; no session state".to_string()
                });
                if status.answered {
                    self.bgp_peers
                        .get_or_insert_with(Vec::new)
                        .extend(status.peers);
                }
                if status.answered6 {
                    self.bgp6_peers
                        .get_or_insert_with(Vec::new)
                        .extend(status.peers6);
                }
                self.bird_errors.extend(status.bird_errors);
                self.bird6_errors.extend(status.bird6_errors);
                notes
            }
            Format::NftText => {
                let rs = nft_text::parse_fragment(text);
                description.clone_from(&rs.fragment);
                let notes = line_notes(&rs.errors);
                merge_nft(&mut self.nft_text, rs);
                notes
            }
            Format::NftJson => self.add_nft_json(text),
            Format::Sysctl => {
                let (s, notes) = sysctl_text::parse(text);
                merge_sysctls(self.sysctls.get_or_insert_with(Sysctls::default), s);
                notes
            }
            Format::WgDump => {
                let (devices, errors) = wireguard::parse_dump(text);
                self.wireguard.get_or_insert_with(Vec::new).extend(devices);
                line_notes(&errors)
            }
            Format::Hostname => self.add_hostname(text),
            Format::CalicoResources => {
                if !self.bundle.datastore_files.iter().any(|p| p == path) {
                    self.bundle.datastore_files.push(path.to_path_buf());
                }
                Vec::new()
            }
            Format::CaptureErrors => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, l)| LineNote::new(n + 1, format!("capture failed: {}", l.trim())))
                .collect(),
        });
        for n in notes {
            let line = section.first_line + n.line.saturating_sub(1);
            self.note(format!("{shown}:{line}: {}", n.message));
        }
        self.seen.insert(origin.format);
        let name = origin.format.name();
        self.bundle.recognised.push((
            path.to_path_buf(),
            match description {
                Some(d) => format!("{name} ({d})"),
                None => name.to_string(),
            },
        ));
        if origin.format != Format::CaptureErrors {
            self.captured_at = self.captured_at.max(mtime);
        }
    }

    fn add_nft_json(&mut self, text: &str) -> Vec<LineNote> {
        if text.trim().is_empty() {
            // nft prints nothing at all when the namespace has no table (as the live reader
            // treats it).
            merge_nft(&mut self.nft_json, NftRuleset::default());
            return Vec::new();
        }
        match nft::parse_json(text) {
            Ok(rs) => {
                let notes = rs
                    .errors
                    .iter()
                    .map(|e| LineNote::new(1, format!("nft JSON: {e}")))
                    .collect();
                merge_nft(&mut self.nft_json, rs);
                notes
            }
            Err(e) => vec![LineNote::new(1, format!("nft JSON not read: {e}"))],
        }
    }

    fn add_hostname(&mut self, text: &str) -> Vec<LineNote> {
        let Some((n, name)) = text
            .lines()
            .enumerate()
            .map(|(n, l)| (n, l.trim()))
            .find(|(_, l)| !l.is_empty())
        else {
            return vec![LineNote::new(1, "empty hostname")];
        };
        if name.contains(char::is_whitespace) || name.len() > 253 {
            return vec![LineNote::new(n + 1, "not a host name")];
        }
        self.node_name.get_or_insert_with(|| name.to_string());
        Vec::new()
    }

    pub fn finish(mut self) -> Bundle {
        let mut notes = Vec::new();
        let blocks = merge_links(std::mem::take(&mut self.blocks));
        let links = resolve_links(&blocks, &mut notes);
        let index: HashMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        let index_of = |dev: &str| index.get(dev).copied();

        // The live reader dumps IPv4 before IPv6 (and iptables legacy before nft, IPv4 before
        // IPv6); stable sorts restore that order whatever order the files were read in.
        let mut addresses = dedupe(blocks.iter().flat_map(|b| b.addresses.clone()).collect());
        addresses.sort_by_key(|a| a.address.addr().is_ipv6());
        let mut routes = dedupe(std::mem::take(&mut self.routes));
        routes.sort_by_key(|r| r.destination.addr().is_ipv6());
        let mut rules = dedupe(std::mem::take(&mut self.rules));
        rules.sort_by_key(|r| r.family);
        let mut iptables = dedupe(std::mem::take(&mut self.iptables));
        iptables.extend(merge_fragments(
            std::mem::take(&mut self.iptables_fragments),
            &mut notes,
        ));
        iptables.sort_by_key(|d| (d.family, d.backend));
        for r in &mut routes {
            r.oif = r.dev.as_deref().and_then(index_of);
        }
        let mut neighbours = dedupe(std::mem::take(&mut self.neighbours));
        for n in &mut neighbours {
            n.ifindex = index_of(&n.dev).unwrap_or(0);
        }
        let mut fdb = dedupe(std::mem::take(&mut self.fdb));
        for e in &mut fdb {
            e.ifindex = index_of(&e.dev).unwrap_or(0);
        }
        if !routes.is_empty() && !routes.iter().any(|r| r.table == TABLE_LOCAL) {
            // Every node has local-table routes; `ip route` without `table all` leaves them out.
            notes.push(
                "routes: only table main was captured (no `table all`): the local table and \
                 policy-routing tables are unknown"
                    .into(),
            );
        }
        if self.nft_json.is_some() && self.nft_text.is_some() {
            notes.push("nft: both a JSON and a text listing found; the JSON one is used".into());
        }
        let unavailable = self.unavailable(&blocks, &links, &iptables);
        let observed = ObservedDataplane {
            node_name: self.node_name.take().unwrap_or_default(),
            captured_at: self.captured_at,
            links,
            addresses,
            routes,
            neighbours,
            fdb,
            rules,
            sysctls: self.sysctls.take().unwrap_or_default(),
            iptables,
            nft: self.nft_json.take().or(self.nft_text.take()),
            wireguard: self.wireguard.take().unwrap_or_default(),
            conntrack: None,
            calico_conntrack: None,
            felix_health: None,
            bgp_peers: self.bgp_peers.take(),
            bgp6_peers: self.bgp6_peers.take(),
            calico_bpf_pins: Vec::new(),
            calico_bpf: None,
            missing_capabilities: Vec::new(),
            unavailable,
        };
        self.bundle.notes.extend(notes);
        Bundle {
            observed,
            ..self.bundle
        }
    }

    fn unavailable(
        &self,
        blocks: &[LinkBlock],
        links: &[Link],
        iptables: &[IptablesDump],
    ) -> Vec<Unavailable> {
        let mut out = Vec::new();
        let mut missing = |kinds: &[Source], source: &str, reason: &str| {
            for kind in kinds {
                out.push(Unavailable::new(*kind, source, reason).with_cause(Cause::NotInInput));
            }
        };
        let seen = |f: Format| self.seen.contains(&f);
        if !seen(Format::IpRoute) {
            missing(&[Source::Routes], Format::IpRoute.name(), NOT_IN_BUNDLE);
        }
        if blocks.is_empty() {
            missing(
                &[Source::Links, Source::LinkDetails],
                Format::IpLink.name(),
                NOT_IN_BUNDLE,
            );
        } else if !blocks.iter().any(|b| b.has_link_line) {
            // Names, MTUs and states come from the `ip addr` headers; MACs and kinds do not.
            missing(
                &[Source::LinkDetails],
                Format::IpLink.name(),
                "not in the bundle: links are known from `ip addr` headers only (no MAC, kind \
                 or VXLAN details)",
            );
        } else if !blocks.iter().any(|b| b.detailed) {
            missing(
                &[Source::LinkDetails],
                "ip -d link",
                "not in the bundle: links were listed without -d (no kind or VXLAN details)",
            );
        }
        if !seen(Format::IpAddr) {
            missing(&[Source::Addresses], Format::IpAddr.name(), NOT_IN_BUNDLE);
        }
        for (f, kind) in [
            (Format::IpNeigh, Source::Neighbours),
            (Format::BridgeFdb, Source::Fdb),
            (Format::IpRule, Source::Rules),
            (Format::Sysctl, Source::Sysctls),
        ] {
            if !seen(f) {
                missing(&[kind], f.name(), NOT_IN_BUNDLE);
            }
        }
        if !seen(Format::IptablesSave)
            && !seen(Format::IptablesFragment)
            && !seen(Format::IptablesListing)
        {
            missing(
                &[Source::Iptables, Source::Ip6tables],
                Format::IptablesSave.name(),
                NOT_IN_BUNDLE,
            );
        }
        // Felix writes its rules to iptables or to nftables, not both: when the iptables
        // input holds them, the nft listing is not needed to judge them.
        let felix_in_iptables = iptables.iter().any(|d| {
            d.felix_chain_count() > 0
                || d.tables
                    .iter()
                    .flat_map(|t| &t.rules)
                    .any(|r| r.target.as_deref().is_some_and(|t| t.starts_with("cali-")))
        });
        if !seen(Format::NftText) && !seen(Format::NftJson) && !felix_in_iptables {
            missing(&[Source::Nftables], Format::NftText.name(), NOT_IN_BUNDLE);
        }
        // The live reader asks `wg` only when a WireGuard device exists; so does this.
        let has_wireguard = links.iter().any(|l| {
            l.kind.as_deref() == Some("wireguard")
                || l.name.starts_with("wireguard.")
                || l.name.starts_with("wg-")
        });
        if has_wireguard && !seen(Format::WgDump) {
            missing(&[Source::Wireguard], Format::WgDump.name(), NOT_IN_BUNDLE);
        }
        // Answers of live services, not kernel state: no bundle holds them, so their checks
        // do not apply to one (rather than making every bundle incomplete).
        let live_only = "live only: a bundle holds the kernel's state, not a service's answer";
        out.push(
            Unavailable::new(Source::FelixHealth, "felix readiness", live_only)
                .with_cause(Cause::NotRunning),
        );
        // Calico eBPF mode's pinned maps live in the bpffs, which no bundle captures: whether
        // Felix pinned any is unknown, not "none".
        for kind in [Source::CalicoBpfRoutes, Source::CalicoBpfCounters] {
            out.push(
                Unavailable::new(kind, "bpffs", "a bundle holds no pinned eBPF maps")
                    .with_cause(Cause::NotInInput),
            );
        }
        // `calicoctl node status` is the one service answer people paste: BGP sessions.
        if self.bgp_peers.is_none() {
            let bgp = match self.bird_errors.first() {
                // calicoctl ran but BIRD did not answer it: no session state is known, which
                // says nothing about the sessions.
                Some(err) => Unavailable::new(
                    Source::Bgp,
                    Format::CalicoctlStatus.name(),
                    format!("BIRD did not answer calicoctl, so no session state is known: {err}"),
                ),
                None => Unavailable::new(Source::Bgp, "bird show protocols", live_only),
            };
            out.push(bgp.with_cause(Cause::NotRunning));
        }
        let calicoctl_seen = self.bgp_peers.is_some()
            || !self.bird_errors.is_empty()
            || !self.bird6_errors.is_empty();
        if self.bgp6_peers.is_none() && calicoctl_seen {
            // Without calicoctl's IPv6 section the bundle says nothing about bird6: missing
            // from the input (IPv6 sessions due are then not judged), unless calicoctl said
            // why bird6 did not answer.
            let bgp6 = match self.bird6_errors.first() {
                Some(err) => Unavailable::new(
                    Source::Bgp6,
                    Format::CalicoctlStatus.name(),
                    format!(
                        "bird6 did not answer calicoctl, so no IPv6 session state is known: {err}"
                    ),
                )
                .with_cause(Cause::NotRunning),
                None => Unavailable::new(
                    Source::Bgp6,
                    "bird6 show protocols",
                    "not in the bundle: no \"IPv6 BGP status\" section of calicoctl node status",
                )
                .with_cause(Cause::NotInInput),
            };
            out.push(bgp6);
        }
        out
    }
}

fn extend<T>(into: &mut Vec<T>, parsed: super::Parsed<T>) -> Vec<LineNote> {
    into.extend(parsed.items);
    parsed.notes
}

/// `line N: why` errors (iptables, nft, wg) as notes; others apply to line 1.
fn line_notes(errors: &[String]) -> Vec<LineNote> {
    errors
        .iter()
        .map(|e| {
            let parsed = e.strip_prefix("line ").and_then(|rest| {
                let (n, msg) = rest.split_once(':')?;
                Some(LineNote::new(n.trim().parse().ok()?, msg.trim()))
            });
            parsed.unwrap_or_else(|| LineNote::new(1, e.clone()))
        })
        .collect()
}

/// The fragments of each family and backend as one dump each (two windows of one paste, an
/// `iptables -L` and an `iptables -t nat -L`).
fn merge_fragments(fragments: Vec<IptablesDump>, notes: &mut Vec<String>) -> Vec<IptablesDump> {
    type Group = ((u8, Option<Backend>), Vec<IptablesDump>);
    let mut groups: Vec<Group> = Vec::new();
    for f in fragments {
        let key = (f.family, f.backend);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(f),
            None => groups.push((key, vec![f])),
        }
    }
    groups
        .into_iter()
        .filter_map(|(_, parts)| {
            let n = parts.len();
            let merged = iptables_fragment::merge(parts)?;
            if n > 1 {
                notes.push(format!(
                    "{}: {n} fragments merged into one ({})",
                    merged.label(),
                    describe_fragment(&merged)
                ));
            }
            Some(merged)
        })
        .collect()
}

/// How a fragment was read: which table each part went to and why, and how many chains it
/// shows whole.
fn describe_fragment(d: &IptablesDump) -> String {
    let Some(f) = &d.fragment else {
        return String::new();
    };
    let tables: Vec<String> = f
        .tables
        .iter()
        .map(|(t, why)| {
            let rules = d.table(t).map_or(0, |t| t.rules.len());
            if why.is_empty() {
                format!("table {t}: {rules} rule(s)")
            } else {
                format!("table {t}: {rules} rule(s), because {why}")
            }
        })
        .collect();
    format!(
        "a fragment, {}; {}; {} chain(s) shown whole",
        f.form,
        if tables.is_empty() {
            "no rules".to_string()
        } else {
            tables.join("; ")
        },
        f.complete_chains.len()
    )
}

fn merge_nft(into: &mut Option<NftRuleset>, rs: NftRuleset) {
    match into {
        None => *into = Some(rs),
        Some(existing) => {
            if let Some(f) = rs.fragment {
                existing.fragment = Some(match existing.fragment.take() {
                    Some(e) => format!("{e}; {f}"),
                    None => f,
                });
            }
            existing.tables.extend(rs.tables);
            existing.chains.extend(rs.chains);
            existing.rules.extend(rs.rules);
            existing.sets.extend(rs.sets);
            existing.errors.extend(rs.errors);
        }
    }
}

fn merge_sysctls(into: &mut Sysctls, from: Sysctls) {
    into.ip_forward = from.ip_forward.or(into.ip_forward);
    into.rp_filter.extend(from.rp_filter);
    into.proxy_arp.extend(from.proxy_arp);
    into.forwarding.extend(from.forwarding);
    into.conntrack_count = from.conntrack_count.or(into.conntrack_count);
    into.conntrack_max = from.conntrack_max.or(into.conntrack_max);
}

/// The same interface from several dumps (`ip -d link`, `ip addr`, `ip -4 addr`) becomes one
/// block: what one dump printed fills what another left out.
fn merge_links(blocks: Vec<LinkBlock>) -> Vec<LinkBlock> {
    let mut merged: Vec<LinkBlock> = Vec::new();
    for b in blocks {
        let Some(m) = merged
            .iter_mut()
            .find(|m| m.link.index == b.link.index && m.link.name == b.link.name)
        else {
            merged.push(b);
            continue;
        };
        if b.detailed && !m.detailed {
            m.link.kind = b.link.kind;
            m.link.vxlan = b.link.vxlan;
            m.detailed = true;
        }
        if m.link.mac.is_none() {
            m.link.mac = b.link.mac;
        }
        if m.link.mtu == 0 {
            m.link.mtu = b.link.mtu;
        }
        m.peer = m.peer.take().or(b.peer);
        m.master = m.master.take().or(b.master);
        m.has_link_line |= b.has_link_line;
        m.addresses.extend(b.addresses);
    }
    merged.sort_by_key(|b| b.link.index);
    merged
}

/// Turns the names the text printed (`@v0`, `master br0`, VXLAN `dev eth0`) into the indexes
/// netlink reports.
fn resolve_links(blocks: &[LinkBlock], notes: &mut Vec<String>) -> Vec<Link> {
    let index_of = |name: &str| {
        blocks
            .iter()
            .find(|b| b.link.name == name)
            .map(|b| b.link.index)
    };
    // iproute2 prints an index it cannot name (a peer in another namespace) as `ifN`.
    let unnamed_index = |name: &str| name.strip_prefix("if").and_then(|n| n.parse().ok());
    blocks
        .iter()
        .map(|b| {
            let mut link = b.link.clone();
            link.link_index = match b.peer.as_deref() {
                None => None,
                Some("NONE") => Some(0),
                Some(peer) => {
                    let idx = index_of(peer).or_else(|| unnamed_index(peer));
                    if idx.is_none() {
                        notes.push(format!(
                            "link {}: peer {peer} is not among the links",
                            link.name
                        ));
                    }
                    idx
                }
            };
            link.controller = b.master.as_deref().and_then(|m| {
                let idx = index_of(m);
                if idx.is_none() {
                    notes.push(format!(
                        "link {}: master {m} is not among the links",
                        link.name
                    ));
                }
                idx
            });
            if let Some(vx) = link.vxlan.as_mut()
                && let Some(parent) = vx.parent_name.clone()
            {
                vx.parent_index = index_of(&parent);
                if vx.parent_index.is_none() {
                    // `dev ifN`: the parent's index is known, its name was not (as live).
                    vx.parent_index = unnamed_index(&parent);
                    if vx.parent_index.is_some() {
                        vx.parent_name = None;
                    }
                }
            }
            link
        })
        .collect()
}

/// Keeps the first of equal items, in order. Items are compared by their debug rendering since
/// the model types do not implement `Hash`, and a quadratic scan would be slow on nodes with
/// tens of thousands of routes.
fn dedupe<T: Debug>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|item| seen.insert(format!("{item:?}")))
        .collect()
}
