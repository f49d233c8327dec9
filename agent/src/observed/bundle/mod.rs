//! Captured text dumps (`ip -d route show table all`, `ip -d link`, `bridge fdb`,
//! `iptables-save`, `nft list ruleset`, …) parsed into the same [`super::ObservedDataplane`]
//! that live reads produce, so that every check runs offline too.
