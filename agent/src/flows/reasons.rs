//! What a kernel drop reason means to an operator of a Calico node: whether a healthy node sees
//! it too, and one line on what it is. The names come from the running kernel's BTF; this table
//! only explains the common ones (from `include/net/dropreason-core.h`), and a reason it does
//! not know is worth a look rather than assumed harmless.

use serde::{Deserialize, Serialize};

/// Whether a drop reason is part of a healthy node's background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropClass {
    /// Seen on healthy nodes (closed ports, sockets torn down, frames for other hosts).
    Expected,
    /// Points at a misconfiguration, a policy, a full queue or a broken path.
    WorthALook,
}

impl DropClass {
    pub fn label(self) -> &'static str {
        match self {
            Self::Expected => "expected",
            Self::WorthALook => "worth a look",
        }
    }

    /// The `assessment` label of `drops_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Expected => "expected",
            Self::WorthALook => "worth_a_look",
        }
    }
}

use DropClass::{Expected, WorthALook};

/// (reason, class, meaning): the reasons operators meet on Calico nodes.
const REASONS: &[(&str, DropClass, &str)] = &[
    (
        "NOT_SPECIFIED",
        Expected,
        "freed on a path the kernel has not annotated; routine unless it tracks a symptom",
    ),
    (
        "NO_SOCKET",
        Expected,
        "no socket for the port: a closed port, a late reply, a scan",
    ),
    (
        "SOCKET_CLOSE",
        Expected,
        "the socket was closing when the packet arrived",
    ),
    (
        "QUEUE_PURGE",
        Expected,
        "queued packets discarded as a socket or queue was torn down",
    ),
    (
        "SOCKET_FILTER",
        Expected,
        "a socket's BPF filter (tcpdump, DHCP client) declined it",
    ),
    (
        "OTHERHOST",
        Expected,
        "addressed to another host's MAC (flooded or promiscuous)",
    ),
    (
        "UNICAST_IN_L2_MULTICAST",
        Expected,
        "unicast IP in a broadcast or multicast frame",
    ),
    ("IPV6DISABLED", Expected, "IPv6 arrived where IPv6 is off"),
    (
        "TCP_OLD_DATA",
        Expected,
        "a TCP segment already received (a retransmission)",
    ),
    (
        "TCP_OLD_SEQUENCE",
        Expected,
        "a TCP segment from before the current sequence (late duplicate)",
    ),
    (
        "TCP_OLD_ACK",
        Expected,
        "a TCP ACK older than what was acknowledged",
    ),
    (
        "TCP_CLOSE",
        Expected,
        "a TCP segment for a closed connection",
    ),
    (
        "TCP_OFOMERGE",
        Expected,
        "an out-of-order TCP segment merged into one already queued",
    ),
    (
        "TCP_RESET",
        Expected,
        "a TCP reset ended the connection the packet belonged to",
    ),
    (
        "UNIX_DISCONNECT",
        Expected,
        "a Unix socket peer disconnected with data queued",
    ),
    (
        "NETFILTER_DROP",
        WorthALook,
        "an iptables/nftables rule dropped it: a network policy deny or a Felix rule",
    ),
    (
        "IP_RPFILTER",
        WorthALook,
        "reverse-path filter: the source is not routed back via this device",
    ),
    (
        "IP_INNOROUTES",
        WorthALook,
        "no route for a packet being forwarded",
    ),
    (
        "IP_OUTNOROUTES",
        WorthALook,
        "no route for a locally sent packet",
    ),
    (
        "IP_INADDRERRORS",
        WorthALook,
        "invalid destination address (often no route to it)",
    ),
    (
        "NEIGH_FAILED",
        WorthALook,
        "ARP/ND resolution of the next hop failed",
    ),
    (
        "NEIGH_QUEUEFULL",
        WorthALook,
        "too many packets waiting for ARP/ND resolution",
    ),
    (
        "NEIGH_DEAD",
        WorthALook,
        "the neighbour entry was removed while in use",
    ),
    (
        "PKT_TOO_BIG",
        WorthALook,
        "above the egress MTU and not fragmentable (MTU mismatch)",
    ),
    ("PKT_TOO_SMALL", WorthALook, "truncated or malformed packet"),
    (
        "SOCKET_RCVBUFF",
        WorthALook,
        "a socket's receive buffer was full: an application not reading",
    ),
    (
        "PROTO_MEM",
        WorthALook,
        "the protocol's memory limit was reached",
    ),
    (
        "TCP_LISTEN_OVERFLOW",
        WorthALook,
        "a listening socket's accept queue overflowed",
    ),
    (
        "TCP_CSUM",
        WorthALook,
        "bad TCP checksum (offload or corruption)",
    ),
    (
        "UDP_CSUM",
        WorthALook,
        "bad UDP checksum (VXLAN checksum offload is a known cause)",
    ),
    ("IP_CSUM", WorthALook, "bad IPv4 header checksum"),
    (
        "IP_NOPROTO",
        WorthALook,
        "no handler for the IP protocol (a tunnel module not loaded?)",
    ),
    (
        "QDISC_DROP",
        WorthALook,
        "the device's queue discipline dropped it (queue full)",
    ),
    (
        "CPU_BACKLOG",
        WorthALook,
        "the per-CPU backlog was full (netdev_max_backlog)",
    ),
    ("FULL_RING", WorthALook, "the device's ring buffer was full"),
    ("DEV_READY", WorthALook, "sent to a device that is down"),
    ("NOMEM", WorthALook, "out of memory while handling it"),
    (
        "TC_INGRESS",
        WorthALook,
        "a TC program dropped it on ingress (Calico eBPF policy)",
    ),
    (
        "TC_EGRESS",
        WorthALook,
        "a TC program dropped it on egress (Calico eBPF policy)",
    ),
    (
        "XDP",
        WorthALook,
        "an XDP program dropped it (Calico eBPF failsafe or DoS rules)",
    ),
    ("VXLAN_INVALID_HDR", WorthALook, "a malformed VXLAN header"),
    (
        "VXLAN_VNI_NOT_FOUND",
        WorthALook,
        "a VXLAN packet for a VNI with no device (VNI mismatch)",
    ),
    (
        "VXLAN_NO_REMOTE",
        WorthALook,
        "no FDB entry for the VXLAN destination MAC",
    ),
    (
        "VXLAN_ENTRY_EXISTS",
        WorthALook,
        "a conflicting VXLAN FDB entry",
    ),
    (
        "FRAG_REASM_TIMEOUT",
        WorthALook,
        "IP fragments that never reassembled",
    ),
    (
        "NO_TX_TARGET",
        WorthALook,
        "no device to send on (a tunnel without its peer)",
    ),
];

/// The class of `reason` and, for the common ones, what it means.
pub fn classify(reason: &str) -> (DropClass, Option<&'static str>) {
    REASONS
        .iter()
        .find(|(name, _, _)| *name == reason)
        .map_or((WorthALook, None), |(_, class, meaning)| {
            (*class, Some(*meaning))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_nodes_background_is_expected_and_the_rest_worth_a_look() {
        for r in ["NOT_SPECIFIED", "NO_SOCKET", "QUEUE_PURGE", "SOCKET_FILTER"] {
            assert_eq!(classify(r).0, DropClass::Expected, "{r}");
        }
        for r in [
            "NETFILTER_DROP",
            "PKT_TOO_BIG",
            "NEIGH_FAILED",
            "IP_INNOROUTES",
        ] {
            assert_eq!(classify(r).0, DropClass::WorthALook, "{r}");
        }
        // A reason this version does not know is never assumed harmless.
        assert_eq!(classify("SOMETHING_NEW"), (DropClass::WorthALook, None));
        assert_eq!(classify("reason 977").0, DropClass::WorthALook);
    }

    #[test]
    fn every_meaning_fits_a_line_beside_its_reason() {
        for (name, _, meaning) in REASONS {
            assert!(name.len() + meaning.len() <= 100, "{name}: {meaning}");
            assert!(!meaning.ends_with('.'), "{name}");
        }
    }
}
