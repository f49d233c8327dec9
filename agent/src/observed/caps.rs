//! Effective capabilities of this process, so that a source that fails for lack of privilege
//! can name the capability instead of reporting a bare "permission denied".

/// Capability numbers from `linux/capability.h`.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set (`CapEff` in `/proc/self/status`), if readable.
pub fn effective() -> Option<u64> {
    parse_cap_eff(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tagent\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        let set = parse_cap_eff(status).expect("CapEff");
        assert!(has(set, CAP_NET_ADMIN));
        assert!(!has(set, CAP_BPF));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
