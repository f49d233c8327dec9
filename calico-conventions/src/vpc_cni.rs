//! The Amazon VPC CNI's conventions on a node where it plumbs the pods and Felix only enforces
//! policy (shared/reference/vpc-cni-policy-only.md §2). All from `aws/amazon-vpc-cni-k8s`
//! (v1.20–v1.23): constants in `pkg/networkutils/network.go`, names in
//! `pkg/networkutils/names.go`, the per-pod objects in
//! `cmd/routed-eni-cni-plugin/driver/driver.go`.

use sha1::{Digest as _, Sha1};

/// `envVethPrefixDefault`: host veths are `eni` + 11 hex chars (`AWS_VPC_K8S_CNI_VETHPREFIX`
/// overrides it; Felix must then use the same `InterfacePrefix`).
pub const VETH_PREFIX: &str = "eni";
/// `ToContainerRulePriority`: `from all to <pod IP> lookup main`, one per pod.
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// `hostRulePriority`: `from all fwmark 0x80/0x80 lookup main` (connmarked traffic leaves
/// through the primary ENI, where it is SNATed).
pub const FWMARK_RULE_PRIORITY: u32 = 1024;
/// `FromPodRulePriority`: `from <pod IP> lookup <ENI table>`, only for pods on a secondary ENI.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// `FromPrimaryIPofENIRulePriority` (v1.20.0+): `from <ENI primary IP> lookup <ENI table>`.
pub const FROM_ENI_RULE_PRIORITY: u32 = 32765;
/// `defaultConnmark` (`AWS_VPC_K8S_CNI_CONNMARK` overrides it).
pub const CONNMARK: u32 = 0x80;
/// The nat chain ipamd always creates, empty when external SNAT is on (`buildIptablesSNATRules`).
pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
/// The nat chain marking pod connections that leave the VPC (iptables backend).
pub const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";
/// The nftables table holding the connmark rules on v1.23.0+ with the nft backend.
pub const NFT_TABLE: &str = "aws-cni";
/// `defaultMTU`: ENIs and pod veths.
pub const ENI_MTU: u32 = 9001;
/// The pod's gateway on its eth0 (`CalculatePodIPv4GatewayIP` for the first interface).
pub const POD_GATEWAY: &str = "169.254.1.1";

/// The host-side veth of a pod: the prefix + the first 11 hex chars of sha1("<ns>.<pod>")
/// (`GeneratePodHostVethName`, the same formula as Calico's `VethNameForWorkload`).
pub fn veth_name(namespace: &str, pod: &str) -> String {
    let h = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{VETH_PREFIX}{}", &hex[..11])
}

/// A VPC CNI pod veth: `eni` + 11 lowercase hex chars.
pub fn is_pod_veth(name: &str) -> bool {
    name.strip_prefix(VETH_PREFIX).is_some_and(|h| {
        h.len() == 11
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The route table of the ENI with device number `device` on network card 0
/// (`CalculateRouteTableId`, v1.20.3+; `device + 1` in every version before): the primary ENI
/// (device 0) uses main.
pub fn eni_table(device: u32) -> u32 {
    if device == 0 { 254 } else { device + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_match_the_reference_examples() {
        // Recomputed with Python hashlib in shared/reference/vpc-cni-policy-only.md §1.1 S4, §2.4.
        assert_eq!(veth_name("default", "nginx"), "enic440f455693");
        assert_eq!(
            veth_name("kube-system", "coredns-5d78c9869d-abcde"),
            "eni4d5f75c480c"
        );
        assert!(is_pod_veth("enic440f455693"));
        assert!(!is_pod_veth("eni0"));
        assert!(!is_pod_veth("eth1"));
        assert!(!is_pod_veth("enic440f45569Z"));
        assert_eq!(eni_table(0), 254);
        assert_eq!(eni_table(1), 2);
    }
}
