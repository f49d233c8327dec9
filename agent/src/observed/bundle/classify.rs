//! What a piece of text is: from the command that printed it (a pasted prompt line), from the
//! name of the file it was saved in (ours, or `calicoctl node diags`' fixed names), and above
//! all from its content, since bundles arrive with arbitrary names.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    capture,
    iproute_names::{is_ethernet_mac, is_nud_state, route_type},
};
use crate::observed::iptables::Backend;

/// The kinds of text a bundle can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Format {
    IpRoute,
    IpLink,
    IpAddr,
    IpNeigh,
    BridgeFdb,
    IpRule,
    IptablesSave,
    /// `iptables [-t T] -L [-n] [-v]`: chain blocks with a column table.
    IptablesListing,
    /// `-A chain …` lines without their `*table` header (`iptables -S`, a cut or grepped
    /// `iptables-save`).
    IptablesFragment,
    /// `calicoctl node status`: the BGP peer table.
    CalicoctlStatus,
    NftText,
    NftJson,
    Sysctl,
    WgDump,
    Hostname,
    /// Calico resources (YAML or JSON); they belong to the datastore reader.
    CalicoResources,
    /// The `capture-errors.txt` that [`super::capture`] writes.
    CaptureErrors,
}

impl Format {
    /// The name used in `Bundle::recognised` and, for missing sources, in `unavailable`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IpRoute => "ip route",
            Self::IpLink => "ip link",
            Self::IpAddr => "ip addr",
            Self::IpNeigh => "ip neigh",
            Self::BridgeFdb => "bridge fdb",
            Self::IpRule => "ip rule",
            Self::IptablesSave => "iptables-save",
            Self::IptablesListing => "iptables -L listing",
            Self::IptablesFragment => "iptables rules without a table header",
            Self::CalicoctlStatus => "calicoctl node status",
            Self::NftText => "nft list ruleset",
            Self::NftJson => "nft -j list ruleset",
            Self::Sysctl => "sysctl",
            Self::WgDump => "wg show all dump",
            Self::Hostname => "hostname",
            Self::CalicoResources => "calico resources",
            Self::CaptureErrors => "capture errors",
        }
    }
}

/// What a command line, or a file named after one, says about its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub format: Format,
    /// 4 or 6, when the command chose one (`ip -6 route`, `ip6tables-save`).
    pub family: Option<u8>,
    /// The iptables backend the command names (`iptables-legacy-save`).
    pub backend: Option<Backend>,
    /// The iptables table the command names (`iptables -t nat -L`); `-L` and `-S` without
    /// `-t` mean filter.
    pub table: Option<&'static str>,
}

impl Origin {
    fn of(format: Format) -> Self {
        Self {
            format,
            family: None,
            backend: None,
            table: None,
        }
    }

    fn family(mut self, family: Option<u8>) -> Self {
        self.family = family;
        self
    }
}

/// Programs whose prompt lines start a new section of a pasted file even after a bare `# `,
/// which otherwise starts a comment in iptables-save and nft output.
pub const KNOWN_PROGRAMS: &[&str] = &[
    "ip",
    "bridge",
    "nft",
    "iptables-save",
    "iptables-legacy-save",
    "iptables-nft-save",
    "ip6tables-save",
    "ip6tables-legacy-save",
    "ip6tables-nft-save",
    "iptables",
    "ip6tables",
    "ipset",
    "sysctl",
    "wg",
    "hostname",
    "cat",
    "calicoctl",
    "kubectl",
    "conntrack",
    "ss",
    "netstat",
    "date",
    "uname",
    "sudo",
    "nsenter",
    "tail",
    "head",
];

/// The program and arguments that produced the output, without `sudo`, `ip netns exec NS`,
/// `nsenter … --`, `kubectl exec … --`, pipes and redirections.
pub fn command_words(cmdline: &str) -> Vec<&str> {
    let first = cmdline.split('|').next().unwrap_or_default();
    let mut words: Vec<&str> = first
        .split_whitespace()
        .take_while(|w| !w.starts_with('>') && !w.starts_with("2>") && *w != ";" && *w != "&&")
        .collect();
    loop {
        let skip = match words.as_slice() {
            ["sudo", rest @ ..] => 1 + rest.iter().take_while(|w| w.starts_with('-')).count(),
            ["ip", "netns", "exec", _, ..] => 4,
            ["ip", "-n" | "-netns", ns, ..] if !ns.starts_with('-') => {
                // `ip -n NS route`: keep `ip`, drop the namespace option.
                words.remove(1);
                words.remove(1);
                continue;
            }
            ["nsenter", rest @ ..] => {
                let mut n = 1;
                let mut it = rest.iter();
                while let Some(w) = it.next() {
                    if *w == "--" {
                        n += 1;
                        break;
                    }
                    if !w.starts_with('-') {
                        break;
                    }
                    n += 1;
                    if matches!(*w, "-t" | "--target") {
                        it.next();
                        n += 1;
                    }
                }
                n
            }
            [
                "kubectl" | "oc" | "docker" | "crictl" | "nerdctl" | "podman",
                "exec",
                ..,
            ] => {
                match words.iter().position(|w| *w == "--") {
                    Some(p) => p + 1,
                    // `docker exec [opts] CONTAINER CMD…`
                    None => 2 + words[2..].iter().take_while(|w| w.starts_with('-')).count() + 1,
                }
            }
            ["env", rest @ ..] => 1 + rest.iter().take_while(|w| w.contains('=')).count(),
            _ => 0,
        };
        if skip == 0 || skip > words.len() {
            break;
        }
        words.drain(..skip);
    }
    words
}

/// What the output of `cmdline` is, if it is a format a bundle is read from.
pub fn from_command(cmdline: &str) -> Option<Origin> {
    let words = command_words(cmdline);
    let program = words.first()?.rsplit('/').next()?;
    let args = &words[1..];
    match program {
        "ip" => from_ip(args),
        "bridge" => {
            let object = args.iter().find(|w| !w.starts_with('-'))?;
            "fdb"
                .starts_with(*object)
                .then(|| Origin::of(Format::BridgeFdb))
        }
        p if (p.starts_with("iptables") || p.starts_with("ip6tables")) && p.ends_with("-save") => {
            Some(Origin {
                format: Format::IptablesSave,
                family: Some(if p.starts_with("ip6") { 6 } else { 4 }),
                backend: if p.contains("-nft-") {
                    Some(Backend::Nft)
                } else if p.contains("-legacy-") {
                    Some(Backend::Legacy)
                } else {
                    None
                },
                table: None,
            })
        }
        "iptables" | "ip6tables" | "iptables-legacy" | "iptables-nft" | "ip6tables-legacy"
        | "ip6tables-nft" => from_iptables(program, args),
        "calicoctl" | "calico-node" => (args.first() == Some(&"node")
            && args.get(1) == Some(&"status"))
        .then(|| Origin::of(Format::CalicoctlStatus)),
        "nft" => {
            if !args.contains(&"list") {
                return None;
            }
            let json = args.iter().any(|a| {
                *a == "--json" || (a.starts_with('-') && !a.starts_with("--") && a.contains('j'))
            });
            Some(Origin::of(if json {
                Format::NftJson
            } else {
                Format::NftText
            }))
        }
        "sysctl" => Some(Origin::of(Format::Sysctl)),
        "wg" => (args.first() == Some(&"show") && args.last() == Some(&"dump"))
            .then(|| Origin::of(Format::WgDump)),
        "hostname" => Some(Origin::of(Format::Hostname)),
        "uname" if args == ["-n"] => Some(Origin::of(Format::Hostname)),
        "cat" => args
            .last()
            .and_then(|path| path.rsplit('/').next())
            .and_then(from_file_name),
        _ => None,
    }
}

/// `iptables [-t T] -L|-S …`: a listing or rules, of the table named (filter by default).
fn from_iptables(program: &str, args: &[&str]) -> Option<Origin> {
    let mut table = "filter";
    let mut format = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "-t" | "--table" => {
                table = match it.next().copied() {
                    Some("nat") => "nat",
                    Some("mangle") => "mangle",
                    Some("raw") => "raw",
                    Some("security") => "security",
                    Some("filter") => "filter",
                    _ => return None,
                };
            }
            "-L" | "--list" => format = Some(Format::IptablesListing),
            "-S" | "--list-rules" => format = Some(Format::IptablesFragment),
            // Bundled short options: `-nvL`, `-vnL`, `-tnat` is not iptables syntax.
            a if a.starts_with('-') && !a.starts_with("--") && a.len() > 2 => {
                if a.contains('L') {
                    format = Some(Format::IptablesListing);
                } else if a.contains('S') {
                    format = Some(Format::IptablesFragment);
                }
            }
            _ => {}
        }
    }
    Some(Origin {
        format: format?,
        family: Some(if program.starts_with("ip6") { 6 } else { 4 }),
        backend: if program.ends_with("-nft") {
            Some(Backend::Nft)
        } else if program.ends_with("-legacy") {
            Some(Backend::Legacy)
        } else {
            None
        },
        table: Some(table),
    })
}

/// iproute2's object names, in the order `ip` matches an abbreviation against them (`ip r` is
/// route, `ip ru` rule, `ip a` address, `ip n` neighbour).
const IP_OBJECTS: &[(&str, Option<Format>)] = &[
    ("address", Some(Format::IpAddr)),
    ("addrlabel", None),
    ("maddress", None),
    ("route", Some(Format::IpRoute)),
    ("rule", Some(Format::IpRule)),
    ("neighbor", Some(Format::IpNeigh)),
    ("neighbour", Some(Format::IpNeigh)),
    ("ntable", None),
    ("ntbl", None),
    ("link", Some(Format::IpLink)),
];

fn from_ip(args: &[&str]) -> Option<Origin> {
    let mut family = None;
    let mut it = args.iter();
    let mut object = None;
    while let Some(arg) = it.next() {
        let Some(opt) = arg.strip_prefix('-') else {
            object = Some(*arg);
            break;
        };
        match opt.trim_start_matches('-') {
            "4" => family = Some(4),
            "6" => family = Some(6),
            "f" | "family" => match it.next().copied() {
                Some("inet") => family = Some(4),
                Some("inet6") => family = Some(6),
                _ => {}
            },
            // JSON and brief output are other formats altogether.
            "j" | "json" | "br" | "brief" => return None,
            "n" | "netns" | "b" | "batch" | "rc" | "rcvbuf" => {
                it.next();
            }
            _ => {}
        }
    }
    let object = object?;
    let format = IP_OBJECTS
        .iter()
        .find(|(name, _)| name.starts_with(object))
        .and_then(|(_, f)| *f)?;
    // Commands that change state print nothing worth reading.
    let verb = it.find(|w| !w.starts_with('-')).copied();
    if matches!(
        verb,
        Some("add" | "del" | "delete" | "change" | "replace" | "append" | "flush" | "set")
    ) {
        return None;
    }
    Some(Origin::of(format).family(family))
}

/// Files with names that say what they hold: what [`super::capture`] writes and what
/// `calicoctl node diags` writes (`diagnostics/ipv4_route`, …).
pub fn from_file_name(name: &str) -> Option<Origin> {
    let stem = ["txt", "out"]
        .iter()
        .find_map(|ext| name.strip_suffix(&format!(".{ext}")))
        .unwrap_or(name);
    let origin = match stem {
        "ipv4_route" => Origin::of(Format::IpRoute).family(Some(4)),
        "ipv6_route" => Origin::of(Format::IpRoute).family(Some(6)),
        "ipv4_addr" => Origin::of(Format::IpAddr).family(Some(4)),
        "ipv6_addr" => Origin::of(Format::IpAddr).family(Some(6)),
        "nft_ruleset" => Origin::of(Format::NftText),
        "ipv4_tables" => Origin::of(Format::IptablesSave).family(Some(4)),
        "ipv6_tables" => Origin::of(Format::IptablesSave).family(Some(6)),
        // calico-node's `/var/lib/calico/nodename`: the name Felix runs under.
        "hostname" | "nodename" => Origin::of(Format::Hostname),
        "sysctl" => Origin::of(Format::Sysctl),
        "capture-errors" => Origin::of(Format::CaptureErrors),
        _ => {
            return capture::COMMANDS
                .iter()
                .find(|argv| capture::file_name(argv) == name)
                .and_then(|argv| from_command(&argv.join(" ")));
        }
    };
    Some(origin)
}

/// How many lines of a text are looked at to recognise it.
const SNIFF_LINES: usize = 400;

/// Recognises a format from the text alone.
pub fn from_content(text: &str) -> Option<Format> {
    let text = text.trim_start_matches('\u{feff}');
    let lines: Vec<&str> = text.lines().take(SNIFF_LINES).collect();
    if lines.iter().any(|l| is_calico_api_version(l)) {
        return Some(Format::CalicoResources);
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && trimmed
            .chars()
            .take(200)
            .collect::<String>()
            .contains("\"nftables\"")
    {
        return Some(Format::NftJson);
    }
    if lines.iter().any(|l| is_iptables_save_line(l)) {
        return Some(Format::IptablesSave);
    }
    if lines.iter().any(|l| is_nft_table_line(l)) {
        return Some(Format::NftText);
    }
    if lines.iter().any(|l| is_calicoctl_status_line(l)) {
        return Some(Format::CalicoctlStatus);
    }
    if lines.iter().any(|l| is_listing_header(l)) {
        return Some(Format::IptablesListing);
    }
    if is_rules_fragment(&lines) {
        return Some(Format::IptablesFragment);
    }
    if is_nft_fragment(&lines) {
        return Some(Format::NftText);
    }
    by_line_votes(&lines)
}

fn is_calico_api_version(line: &str) -> bool {
    // JSON (`calicoctl get -o json`), possibly all on one line.
    if line.contains("\"apiVersion\"")
        && (line.contains("\"projectcalico.org/v3\"")
            || line.contains("\"crd.projectcalico.org/v1\""))
    {
        return true;
    }
    let l = line.trim().trim_start_matches("- ").trim();
    let value = l
        .strip_prefix("apiVersion:")
        .or_else(|| l.strip_prefix("\"apiVersion\":"))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == ',' || c == '\''));
    matches!(
        value,
        Some("projectcalico.org/v3" | "crd.projectcalico.org/v1")
    )
}

fn is_iptables_save_line(line: &str) -> bool {
    matches!(
        line.trim_end(),
        "*filter" | "*nat" | "*mangle" | "*raw" | "*security"
    ) || (line.starts_with("# Generated by ip")
        && line
            .split_whitespace()
            .nth(3)
            .is_some_and(|p| p.contains("tables")))
}

fn is_nft_table_line(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or_default();
    let words: Vec<&str> = code.split_whitespace().collect();
    matches!(
        words.as_slice(),
        ["table", _, "{"]
            | [
                "table",
                "ip" | "ip6" | "inet" | "arp" | "bridge" | "netdev",
                _,
                "{"
            ]
    )
}

/// `calicoctl node status` prints these whatever BIRD answered.
fn is_calicoctl_status_line(line: &str) -> bool {
    let l = line.trim();
    l == "IPv4 BGP status"
        || l == "IPv6 BGP status"
        || l.starts_with("Calico process is ")
        || (l.contains("PEER ADDRESS") && l.contains("PEER TYPE"))
}

/// `Chain cali-INPUT (1 references)`, `Chain INPUT (policy ACCEPT 0 packets, 0 bytes)`.
pub(super) fn is_listing_header(line: &str) -> bool {
    let Some(rest) = line.trim().strip_prefix("Chain ") else {
        return false;
    };
    let mut words = rest.split_whitespace();
    let _name = words.next();
    words
        .next()
        .is_some_and(|w| w == "(policy" || (w.starts_with('(') && w[1..].parse::<u64>().is_ok()))
}

/// `-A chain …` lines (with or without `[packets:bytes]` in front), `-N chain`, `-P chain
/// POLICY`: at least half of what is not blank or a comment.
fn is_rules_fragment(lines: &[&str]) -> bool {
    let mut rules = 0;
    let mut other = 0;
    for l in lines {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let body = match l.strip_prefix('[') {
            Some(rest) => rest.split_once("] ").map_or(l, |(_, b)| b),
            None => l,
        };
        if body.starts_with("-A ") || body.starts_with("-N ") || body.starts_with("-P ") {
            rules += 1;
        } else {
            other += 1;
        }
    }
    rules > 0 && rules >= other
}

/// nft text without its `table … {` line: a `chain NAME {` block holding a hook or rules.
fn is_nft_fragment(lines: &[&str]) -> bool {
    let chain = lines.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        matches!(w.as_slice(), ["chain", _, "{"])
    });
    chain
        && lines.iter().any(|l| {
            let l = l.trim();
            (l.starts_with("type ") && l.contains(" hook "))
                || l.contains("counter packets ")
                || l.starts_with("jump ")
                || l.contains(" jump ")
        })
}

/// Each top-level line votes for the format it looks like; the winner needs a majority.
fn by_line_votes(lines: &[&str]) -> Option<Format> {
    let mut votes: Vec<(Format, usize)> = Vec::new();
    let mut considered = 0;
    let mut has_address_lines = false;
    for line in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let first = line.split_whitespace().next().unwrap_or_default();
            has_address_lines |= first == "inet" || first == "inet6";
            continue;
        }
        considered += 1;
        if let Some(f) = line_format(line) {
            match votes.iter_mut().find(|(v, _)| *v == f) {
                Some((_, n)) => *n += 1,
                None => votes.push((f, 1)),
            }
        }
    }
    let (format, count) = votes.into_iter().max_by_key(|(_, n)| *n)?;
    if count * 2 < considered {
        return None;
    }
    Some(match format {
        Format::IpLink if has_address_lines => Format::IpAddr,
        f => f,
    })
}

pub(super) fn line_format(line: &str) -> Option<Format> {
    if line.contains('\t') {
        let fields = line.split('\t').count();
        if (fields == 5 || fields == 9) && line.split('\t').any(is_wg_key) {
            return Some(Format::WgDump);
        }
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let first = *words.first()?;
    if let Some(index) = first.strip_suffix(':')
        && index.parse::<u32>().is_ok()
    {
        if words.get(1) == Some(&"from")
            || (words.get(1) == Some(&"not") && words.get(2) == Some(&"from"))
        {
            return Some(Format::IpRule);
        }
        let is_header = words.get(2).is_some_and(|w| w.starts_with('<'))
            || matches!(words.get(2), Some(&"inet" | &"inet6"));
        if words.get(1).is_some_and(|n| n.ends_with(':')) || is_header {
            return Some(Format::IpLink);
        }
    }
    if is_ethernet_mac(first) && words.contains(&"dev") {
        return Some(Format::BridgeFdb);
    }
    let is_ip = first.parse::<IpAddr>().is_ok();
    if is_ip
        && words.get(1) == Some(&"dev")
        && (words.contains(&"lladdr") || words.last().is_some_and(|w| is_nud_state(w)))
    {
        return Some(Format::IpNeigh);
    }
    let (dest, rest) = match route_type(first) {
        Some(_) => (
            words.get(1).copied().unwrap_or_default(),
            words.get(2..).unwrap_or_default(),
        ),
        None => (first, words.get(1..).unwrap_or_default()),
    };
    let is_dest =
        dest == "default" || dest.parse::<IpAddr>().is_ok() || dest.parse::<ipnet::IpNet>().is_ok();
    let keyword = rest.iter().any(|w| {
        matches!(
            *w,
            "via" | "dev" | "proto" | "scope" | "table" | "metric" | "src"
        )
    });
    if is_dest && (keyword || matches!(first, "blackhole" | "unreachable" | "prohibit" | "throw")) {
        return Some(Format::IpRoute);
    }
    if is_sysctl_line(line) {
        return Some(Format::Sysctl);
    }
    None
}

fn is_sysctl_line(line: &str) -> bool {
    if let Some(path) = line.strip_prefix("/proc/sys/") {
        return path.contains(':');
    }
    let Some((key, _)) = line.split_once(" = ") else {
        return false;
    };
    !key.contains(char::is_whitespace) && key.split('.').count() >= 2
}

/// WireGuard keys are 32 bytes in base64: 44 characters ending in `=`.
fn is_wg_key(field: &str) -> bool {
    field.len() == 44
        && field.ends_with('=')
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_their_format() {
        type Case = (&'static str, Option<(Format, Option<u8>)>);
        let cases: &[Case] = &[
            ("ip -d route show table all", Some((Format::IpRoute, None))),
            ("sudo ip -6 r", Some((Format::IpRoute, Some(6)))),
            ("ip ru", Some((Format::IpRule, None))),
            ("ip -6 rule list", Some((Format::IpRule, Some(6)))),
            ("ip a", Some((Format::IpAddr, None))),
            ("ip -4 addr show dev eth0", Some((Format::IpAddr, Some(4)))),
            ("ip -d l", Some((Format::IpLink, None))),
            ("ip n", Some((Format::IpNeigh, None))),
            ("ip -f inet6 neigh show", Some((Format::IpNeigh, Some(6)))),
            (
                "ip netns exec cdpa-a ip -d link show",
                Some((Format::IpLink, None)),
            ),
            ("ip -n cdpa-a route", Some((Format::IpRoute, None))),
            ("nsenter -t 1 -n -- ip route", Some((Format::IpRoute, None))),
            (
                "kubectl exec -n kube-system calico-node-x -- ip neigh",
                Some((Format::IpNeigh, None)),
            ),
            ("bridge fdb show", Some((Format::BridgeFdb, None))),
            ("bridge fdb", Some((Format::BridgeFdb, None))),
            (
                "iptables-save -c | grep cali",
                Some((Format::IptablesSave, Some(4))),
            ),
            (
                "/usr/sbin/ip6tables-legacy-save",
                Some((Format::IptablesSave, Some(6))),
            ),
            ("nft -j list ruleset", Some((Format::NftJson, None))),
            ("nft -n -a list ruleset", Some((Format::NftText, None))),
            ("sysctl -a", Some((Format::Sysctl, None))),
            ("wg show all dump", Some((Format::WgDump, None))),
            ("hostname", Some((Format::Hostname, None))),
            (
                "cat /tmp/diags/ipv4_route",
                Some((Format::IpRoute, Some(4))),
            ),
            (
                "calicoctl node status",
                Some((Format::CalicoctlStatus, None)),
            ),
            (
                "iptables -L -n -v",
                Some((Format::IptablesListing, Some(4))),
            ),
            ("iptables -S", Some((Format::IptablesFragment, Some(4)))),
            ("ip -j route", None),
            ("ip route add 10.0.0.0/8 dev eth0", None),
            ("ipset list", None),
            ("wg show", None),
            ("", None),
        ];
        for (cmd, want) in cases {
            let got = from_command(cmd).map(|o| (o.format, o.family));
            assert_eq!(got, *want, "{cmd}");
        }
        let legacy = from_command("iptables-legacy-save -c").expect("iptables");
        assert_eq!(legacy.backend, Some(Backend::Legacy));
        assert_eq!(from_command("iptables-save").and_then(|o| o.backend), None);
    }

    #[test]
    fn file_names_of_our_capture_and_calicoctl() {
        for argv in capture::COMMANDS {
            let name = capture::file_name(argv);
            assert_eq!(
                from_file_name(&name).map(|o| o.format),
                from_command(&argv.join(" ")).map(|o| o.format),
                "{name}"
            );
        }
        assert_eq!(
            from_file_name("ipv6_route").map(|o| (o.format, o.family)),
            Some((Format::IpRoute, Some(6)))
        );
        assert_eq!(
            from_file_name("nft_ruleset").map(|o| o.format),
            Some(Format::NftText)
        );
        assert_eq!(from_file_name("journalctl_calico_node"), None);
    }

    #[test]
    fn content_alone_is_enough() {
        let cases: &[(&str, Option<Format>)] = &[
            (
                include_str!("testdata/ip-d-route-show-table-all.txt"),
                Some(Format::IpRoute),
            ),
            (include_str!("testdata/ip-route.txt"), Some(Format::IpRoute)),
            (
                include_str!("testdata/ip-d-link-show.txt"),
                Some(Format::IpLink),
            ),
            (include_str!("testdata/ip-addr.txt"), Some(Format::IpAddr)),
            (include_str!("testdata/ip-4-addr.txt"), Some(Format::IpAddr)),
            (include_str!("testdata/ip-neigh.txt"), Some(Format::IpNeigh)),
            (
                include_str!("testdata/ip-neigh-states.txt"),
                Some(Format::IpNeigh),
            ),
            (
                include_str!("testdata/bridge-fdb-show.txt"),
                Some(Format::BridgeFdb),
            ),
            (
                include_str!("testdata/ip-rule-kinds.txt"),
                Some(Format::IpRule),
            ),
            (
                include_str!("testdata/iptables-nft-save-c.txt"),
                Some(Format::IptablesSave),
            ),
            (
                include_str!("testdata/nft-calico.txt"),
                Some(Format::NftText),
            ),
            (
                include_str!("testdata/nft-calico-n-a.txt"),
                Some(Format::NftText),
            ),
            (
                include_str!("testdata/nft-iptables-nft.json"),
                Some(Format::NftJson),
            ),
            (include_str!("testdata/sysctl.txt"), Some(Format::Sysctl)),
            (
                include_str!("testdata/wg-show-all-dump.txt"),
                Some(Format::WgDump),
            ),
            (
                "apiVersion: projectcalico.org/v3\nkind: IPPool\n",
                Some(Format::CalicoResources),
            ),
            (
                "{\"kind\": \"IPPoolList\", \"items\": [{\"apiVersion\": \"crd.projectcalico.org/v1\"}]}",
                Some(Format::CalicoResources),
            ),
            ("apiVersion: v1\nkind: ConfigMap\n", None),
            ("Mon Nov 23 18:47:06 UTC 2026\n", None),
            ("", None),
            ("\u{0}\u{1}binary", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                from_content(text),
                *want,
                "{}",
                text.lines().next().unwrap_or_default()
            );
        }
    }
}
