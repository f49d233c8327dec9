//! The node's identity, resolved the way Felix resolves it.

/// `--node-name` when given, else `NODENAME` (what calico-node's manifests set from the
/// downward API), else the hostname (Felix's `FelixHostname` default).
pub fn resolve_name(explicit: Option<&str>) -> String {
    let env = std::env::var("NODENAME").ok();
    if let Some(n) = explicit
        .or(env.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        return n.to_string();
    }
    hostname()
}

/// The kernel's hostname (of this network namespace's UTS namespace), `unknown` if unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_name_wins_and_blank_falls_back() {
        assert_eq!(resolve_name(Some("node-a")), "node-a");
        assert_ne!(resolve_name(Some("  ")), "");
    }
}
