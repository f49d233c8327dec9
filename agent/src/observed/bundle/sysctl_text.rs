//! `sysctl -a` style lines (`net.ipv4.conf.vxlan/calico.rp_filter = 1`) and
//! `grep -r . /proc/sys/net/…` style ones (`/proc/sys/net/ipv4/ip_forward:1`) into [`Sysctls`].
//!
//! `sysctl` prints a `.` inside an interface name as `/`, since `.` separates the key's parts.
//! Only the keys the live reader reads are kept, with the same rule: `rp_filter` for every
//! interface, `proxy_arp` and `forwarding` for workload (`cali*`) interfaces.

use std::collections::BTreeMap;

use super::LineNote;
use crate::observed::model::Sysctls;

/// Parses the lines into one [`Sysctls`], with notes on the lines that could not be used.
pub fn parse(text: &str) -> (Sysctls, Vec<LineNote>) {
    let mut s = Sysctls::default();
    let mut notes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = split_line(line) else {
            // `sysctl: permission denied on key …` and the like.
            notes.push(LineNote::new(lineno, "not a `key = value` line"));
            continue;
        };
        if let Err(e) = apply(&mut s, &key, value) {
            notes.push(LineNote::new(lineno, e));
        }
    }
    (s, notes)
}

/// The key as its parts (`["net", "ipv4", "conf", "vxlan.calico", "rp_filter"]`) and the value.
fn split_line(line: &str) -> Option<(Vec<String>, &str)> {
    if let Some(path) = line.strip_prefix("/proc/sys/") {
        let (path, value) = path.split_once(':')?;
        let parts = path.split('/').map(str::to_string).collect();
        return Some((parts, value.trim()));
    }
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let parts = if key.contains('.') {
        key.split('.').map(|p| p.replace('/', ".")).collect()
    } else {
        key.split('/').map(str::to_string).collect()
    };
    Some((parts, value.trim()))
}

fn apply(s: &mut Sysctls, key: &[String], value: &str) -> Result<(), String> {
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    let small = || {
        value
            .parse::<u8>()
            .map_err(|_| format!("{}: bad value {value}", key.join(".")))
    };
    let large = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("{}: bad value {value}", key.join(".")))
    };
    match key.as_slice() {
        ["net", "ipv4", "ip_forward"] => s.ip_forward = Some(small()?),
        ["net", "ipv4", "conf", iface, "rp_filter"] => {
            insert(&mut s.rp_filter, iface, small()?);
        }
        ["net", "ipv4", "conf", iface, "proxy_arp"]
            if calico_conventions::is_workload_iface(iface) =>
        {
            insert(&mut s.proxy_arp, iface, small()?);
        }
        ["net", "ipv4", "conf", iface, "forwarding"]
            if calico_conventions::is_workload_iface(iface) =>
        {
            insert(&mut s.forwarding, iface, small()?);
        }
        ["net", "netfilter", "nf_conntrack_count"] => s.conntrack_count = Some(large()?),
        ["net", "netfilter", "nf_conntrack_max"] => s.conntrack_max = Some(large()?),
        _ => {}
    }
    Ok(())
}

fn insert(map: &mut BTreeMap<String, u8>, iface: &str, value: u8) {
    map.insert(iface.to_string(), value);
}

/// The line `sysctl -a` would print for `/proc/sys/<path>` (`net/ipv4/conf/vxlan.calico/rp_filter`).
pub fn line_for(path: &str, value: &str) -> String {
    let key = path
        .split('/')
        .map(|p| p.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".");
    format!("{key} = {value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_sysctls() {
        let (s, notes) = parse(include_str!("testdata/sysctl.txt"));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(s.rp_filter.get("vxlan.calico"), Some(&0));
        insta::assert_yaml_snapshot!(s);
    }

    #[test]
    fn proc_paths_and_sysctl_names_agree() {
        let by_name = "net.ipv4.ip_forward = 1\nnet.ipv4.conf.vxlan/calico.rp_filter = 2\nnet.ipv4.conf.cali1.proxy_arp = 1\nnet.ipv4.conf.eth0.proxy_arp = 1\n";
        let by_path = "/proc/sys/net/ipv4/ip_forward:1\n/proc/sys/net/ipv4/conf/vxlan.calico/rp_filter:2\n/proc/sys/net/ipv4/conf/cali1/proxy_arp:1\n/proc/sys/net/ipv4/conf/eth0/proxy_arp:1\n";
        assert_eq!(parse(by_name), parse(by_path));
        let (s, _) = parse(by_name);
        assert!(s.proxy_arp.contains_key("cali1") && !s.proxy_arp.contains_key("eth0"));
        assert_eq!(
            line_for("net/ipv4/conf/vxlan.calico/rp_filter", "2"),
            "net.ipv4.conf.vxlan/calico.rp_filter = 2"
        );
    }

    #[test]
    fn bad_values_and_lines_are_notes() {
        let (s, notes) = parse(
            "net.ipv4.ip_forward = yes\nsysctl: permission denied on key 'net.core.bpf_jit_harden'\n\
             net.netfilter.nf_conntrack_max = 262144\nnet.ipv4.conf.all.rp_filter =",
        );
        assert_eq!(s.conntrack_max, Some(262_144));
        assert_eq!(s.ip_forward, None);
        insta::assert_yaml_snapshot!(notes);
    }
}
