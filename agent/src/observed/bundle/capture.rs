//! Writing a bundle from the live node: one file per command, named after it, plus the
//! sysctls the live reader uses and a `capture-errors.txt` for what could not be run.
//!
//! Everything runs in the calling thread's network namespace: commands are spawned from it,
//! and `/proc/sys/net` is read on it (that directory shows the namespace of the thread that
//! opens it, so it must not move to a blocking pool).

use std::path::{Path, PathBuf};

use super::{BundleError, sysctl_text};
use crate::observed::exec;

/// The commands of a bundle, in the order they run. All of them only read.
pub const COMMANDS: &[&[&str]] = &[
    &["ip", "-d", "route", "show", "table", "all"],
    &["ip", "-6", "-d", "route", "show", "table", "all"],
    &["ip", "-d", "link", "show"],
    &["ip", "addr"],
    // `nud all` includes NOARP entries, so a bundle holds what a live read holds.
    &["ip", "neigh", "show", "nud", "all"],
    &["bridge", "fdb", "show"],
    &["ip", "rule"],
    &["ip", "-6", "rule"],
    &["iptables-legacy-save", "-c"],
    &["iptables-nft-save", "-c"],
    &["ip6tables-legacy-save", "-c"],
    &["ip6tables-nft-save", "-c"],
    &["nft", "-j", "list", "ruleset"],
    &["wg", "show", "all", "dump"],
];

/// The node's identity as Felix knows it (`--node-name`/`NODENAME`/hostname), which in a
/// namespace or a container need not be the kernel's hostname.
pub const HOSTNAME_FILE: &str = "hostname.txt";

/// The sysctls, as `sysctl -a` would print them.
pub const SYSCTL_FILE: &str = "sysctl.txt";
/// One line per command that was missing or failed.
pub const ERRORS_FILE: &str = "capture-errors.txt";

/// `ip -6 -d route show table all` → `ip-6-d-route-show-table-all.txt`.
pub fn file_name(argv: &[&str]) -> String {
    let words: Vec<&str> = argv.iter().map(|w| w.trim_start_matches('-')).collect();
    format!("{}.txt", words.join("-"))
}

/// Captures the calling thread's network namespace into `dir` (created if needed) and returns
/// the files written. A command that is missing or fails is skipped and recorded in
/// `capture-errors.txt`; only failing to write is an error.
pub async fn capture(dir: &Path, node_name: &str) -> Result<Vec<PathBuf>, BundleError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| BundleError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for argv in COMMANDS {
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        match exec::run(program, args).await {
            Ok(out) => written.push(write(dir, &file_name(argv), &out).await?),
            Err(e) => errors.push(format!("{}: {e}", argv.join(" "))),
        }
    }
    written.push(write(dir, HOSTNAME_FILE, &format!("{node_name}\n")).await?);
    let (sysctls, sysctl_errors) = sysctl_lines(Path::new("/proc/sys"));
    errors.extend(sysctl_errors);
    written.push(write(dir, SYSCTL_FILE, &sysctls).await?);
    if !errors.is_empty() {
        written.push(write(dir, ERRORS_FILE, &(errors.join("\n") + "\n")).await?);
    }
    Ok(written)
}

async fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, BundleError> {
    let path = dir.join(name);
    tokio::fs::write(&path, text)
        .await
        .map_err(|source| BundleError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The settings `sysctl.rs` reads, below `root` (`/proc/sys`), as `name = value` lines: every
/// interface's `rp_filter`, `proxy_arp` and `forwarding` (the reader keeps the last two for
/// workload interfaces only). Read synchronously on purpose: see the module comment.
fn sysctl_lines(root: &Path) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut errors = Vec::new();
    let mut emit = |rel: &str, required: bool, errors: &mut Vec<String>| {
        match std::fs::read_to_string(root.join(rel)) {
            Ok(v) => {
                out.push_str(&sysctl_text::line_for(rel, v.trim()));
                out.push('\n');
            }
            // nf_conntrack_* exist only while the conntrack module is loaded.
            Err(_) if !required => {}
            Err(e) => errors.push(format!("/proc/sys/{rel}: {e}")),
        }
    };
    emit("net/ipv4/ip_forward", true, &mut errors);
    match std::fs::read_dir(root.join("net/ipv4/conf")) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for name in names {
                for key in ["rp_filter", "proxy_arp", "forwarding"] {
                    emit(&format!("net/ipv4/conf/{name}/{key}"), false, &mut errors);
                }
            }
        }
        Err(e) => errors.push(format!("/proc/sys/net/ipv4/conf: {e}")),
    }
    emit("net/netfilter/nf_conntrack_count", false, &mut errors);
    emit("net/netfilter/nf_conntrack_max", false, &mut errors);
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_command() {
        assert_eq!(
            file_name(&["ip", "-6", "-d", "route", "show", "table", "all"]),
            "ip-6-d-route-show-table-all.txt"
        );
        assert_eq!(
            file_name(&["iptables-legacy-save", "-c"]),
            "iptables-legacy-save-c.txt"
        );
        let names: std::collections::HashSet<String> =
            COMMANDS.iter().map(|c| file_name(c)).collect();
        assert_eq!(names.len(), COMMANDS.len(), "file names must be unique");
    }

    #[test]
    fn sysctl_lines_read_back_as_the_live_reader_reads_them() {
        let root = std::env::temp_dir().join(format!("cdpa-bundle-sysctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (rel, v) in [
            ("net/ipv4/ip_forward", "1\n"),
            ("net/ipv4/conf/all/rp_filter", "0\n"),
            ("net/ipv4/conf/vxlan.calico/rp_filter", "2\n"),
            ("net/ipv4/conf/cali1a2b/proxy_arp", "1\n"),
            ("net/ipv4/conf/cali1a2b/forwarding", "1\n"),
            ("net/ipv4/conf/eth0/proxy_arp", "1\n"),
        ] {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, v).expect("write");
        }
        let (text, errors) = sysctl_lines(&root);
        let mut unavailable = Vec::new();
        let live = crate::observed::sysctl::read(&root.join("net"), &mut unavailable);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(text.contains("net.ipv4.conf.vxlan/calico.rp_filter = 2"));
        let (parsed, notes) = sysctl_text::parse(&text);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(parsed, live);
    }
}
