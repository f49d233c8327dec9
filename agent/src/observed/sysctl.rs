//! The `/proc/sys/net` settings Calico's routing depends on. Values are read through the
//! calling thread's network namespace, like every other source.

use std::{collections::BTreeMap, path::Path};

use super::{Source, Unavailable, model::Sysctls};

const ROOT: &str = "/proc/sys/net";

/// Reads the sysctls below `root` (normally `/proc/sys/net`; tests point it at a fixture tree).
/// `workloads` are the interface names that get the per-workload settings (`cali*`).
pub fn read(root: &Path, unavailable: &mut Vec<Unavailable>) -> Sysctls {
    let mut s = Sysctls {
        ip_forward: read_u8(&root.join("ipv4/ip_forward")),
        ..Default::default()
    };
    let conf = root.join("ipv4/conf");
    match std::fs::read_dir(&conf) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for name in names {
                let dir = conf.join(&name);
                if let Some(v) = read_u8(&dir.join("rp_filter")) {
                    s.rp_filter.insert(name.clone(), v);
                }
                if calico_conventions::is_workload_iface(&name) {
                    insert(&mut s.proxy_arp, &name, read_u8(&dir.join("proxy_arp")));
                    insert(&mut s.forwarding, &name, read_u8(&dir.join("forwarding")));
                }
            }
        }
        Err(e) => unavailable.push(Unavailable::new(
            Source::Sysctls,
            conf.display().to_string(),
            e.to_string(),
        )),
    }
    s.conntrack_count = read_u64(&root.join("netfilter/nf_conntrack_count"));
    s.conntrack_max = read_u64(&root.join("netfilter/nf_conntrack_max"));
    s
}

pub fn read_live(unavailable: &mut Vec<Unavailable>) -> Sysctls {
    read(Path::new(ROOT), unavailable)
}

fn insert(map: &mut BTreeMap<String, u8>, name: &str, v: Option<u8>) {
    if let Some(v) = v {
        map.insert(name.to_string(), v);
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_u8(path: &Path) -> Option<u8> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, value: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, value).expect("write");
    }

    #[test]
    fn reads_a_proc_sys_net_tree() {
        let dir = std::env::temp_dir().join(format!("cdpa-sysctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, "ipv4/ip_forward", "1\n");
        for (iface, rp) in [
            ("all", "0"),
            ("default", "1"),
            ("eth0", "2"),
            ("cali1a2b3c4d5e6", "1"),
        ] {
            write(&dir, &format!("ipv4/conf/{iface}/rp_filter"), rp);
        }
        write(&dir, "ipv4/conf/cali1a2b3c4d5e6/proxy_arp", "1");
        write(&dir, "ipv4/conf/cali1a2b3c4d5e6/forwarding", "1");
        write(&dir, "ipv4/conf/eth0/proxy_arp", "0");
        write(&dir, "netfilter/nf_conntrack_count", "12");
        write(&dir, "netfilter/nf_conntrack_max", "not-a-number");
        let mut unavailable = Vec::new();
        let s = read(&dir, &mut unavailable);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(unavailable.is_empty());
        insta::assert_yaml_snapshot!(s);
    }

    #[test]
    fn missing_tree_is_reported() {
        let mut unavailable = Vec::new();
        let s = read(Path::new("/nonexistent/proc/sys/net"), &mut unavailable);
        assert_eq!(s.ip_forward, None);
        assert_eq!(unavailable.len(), 1);
        assert!(unavailable[0].source.ends_with("ipv4/conf"));
    }
}
