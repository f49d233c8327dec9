//! Calico resources as the API server stores them. The same spec shapes serve both API groups:
//! `projectcalico.org/v3` (calicoctl, native v3 CRDs) and `crd.projectcalico.org/v1` (the KDD
//! CRDs, whose spec is the v3 spec JSON). Field names follow
//! shared/reference/calico-dataplane.md §8; anything not listed is ignored with a warning.
//! Fields that are known but not used are [`Known`]: read past, never stored (at 10,000 nodes
//! the IPAM blocks' bookkeeping alone is millions of values).

use std::collections::BTreeMap;

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};

/// A field Calico has and verification does not use: read past without storing it. Unlike
/// serde's `IgnoredAny` it is not reported as an unknown field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known;

impl<'de> Deserialize<'de> for Known {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KnownVisitor)
    }
}

struct KnownVisitor;

impl<'de> Visitor<'de> for KnownVisitor {
    type Value = Known;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_str<E>(self, _: &str) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_unit<E>(self) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_none<E>(self) -> Result<Known, E> {
        Ok(Known)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Known, D::Error> {
        Known::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Known, A::Error> {
        while seq.next_element::<Known>()?.is_some() {}
        Ok(Known)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Known, A::Error> {
        while map.next_entry::<Known, Known>()?.is_some() {}
        Ok(Known)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    // Present on everything `kubectl get -o yaml` prints; read so that it is not reported.
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    pub cidr: String,
    #[serde(default)]
    pub vxlan_mode: Option<String>,
    #[serde(default)]
    pub ipip_mode: Option<String>,
    #[serde(default)]
    pub nat_outgoing: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub disable_bgp_export: bool,
    #[serde(default)]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub node_selector: Option<String>,
    #[serde(default)]
    pub namespace_selector: Option<String>,
    #[serde(default)]
    pub allowed_uses: Option<Vec<String>>,
    #[serde(default)]
    pub assignment_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlockSpec {
    pub cidr: String,
    #[serde(default)]
    pub affinity: Option<String>,
    #[serde(default)]
    pub affinity_claim_time: Known,
    #[serde(default)]
    pub allocations: Vec<Option<u32>>,
    #[serde(default)]
    pub unallocated: Known,
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default)]
    pub sequence_number: Known,
    #[serde(default)]
    pub sequence_number_for_allocation: Known,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub strict_affinity: bool,
}

/// The `secondary` attributes verification reads: which node uses the address and, for a pod's,
/// which pod. The others (`type`, `timestamp`…) are read past: kept, they were most of a
/// 10,000-node datastore's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Secondary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl<'de> Deserialize<'de> for Secondary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SecondaryVisitor)
    }
}

struct SecondaryVisitor;

impl<'de> Visitor<'de> for SecondaryVisitor {
    type Value = Secondary;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a mapping of attribute names to text")
    }

    fn visit_unit<E>(self) -> Result<Secondary, E> {
        Ok(Secondary::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secondary, A::Error> {
        let mut s = Secondary::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "node" => &mut s.node,
                "namespace" => &mut s.namespace,
                "pod" => &mut s.pod,
                _ => {
                    map.next_value::<Known>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(s)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AllocationAttribute {
    #[serde(default, rename = "handle_id", alias = "handleID")]
    pub handle_id: Known,
    #[serde(default)]
    pub secondary: Secondary,
    #[serde(default, rename = "alternateOwnerAttrs")]
    pub alternate_owner_attrs: Known,
    #[serde(default, rename = "releasedAt")]
    pub released_at: Known,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    #[serde(default)]
    pub state: String,
    pub node: String,
    pub cidr: String,
    /// A string (`"true"`/`"false"`) in `crd.projectcalico.org/v1`, a bool in v3.
    #[serde(default, deserialize_with = "bool_or_string")]
    pub deleted: bool,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match B::deserialize(d)? {
        B::Bool(b) => Ok(b),
        B::Str(s) => match s.as_str() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected \"true\" or \"false\", got {other:?}"
            ))),
        },
    }
}

/// Calico's Node (`projectcalico.org/v3`), as `calicoctl get nodes -o yaml` prints it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalicoNodeSpec {
    #[serde(default)]
    pub bgp: Option<NodeBgpSpec>,
    #[serde(default, rename = "ipv4VXLANTunnelAddr")]
    pub ipv4_vxlan_tunnel_addr: Option<String>,
    #[serde(default, rename = "vxlanTunnelMACAddr")]
    pub vxlan_tunnel_mac_addr: Option<String>,
    #[serde(default, rename = "ipv6VXLANTunnelAddr")]
    pub ipv6_vxlan_tunnel_addr: Option<String>,
    #[serde(default, rename = "vxlanTunnelMACAddrV6")]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    #[serde(default)]
    pub wireguard: Option<NodeWireguardSpec>,
    #[serde(default)]
    pub addresses: Known,
    #[serde(default)]
    pub interfaces: Known,
    #[serde(default)]
    pub orch_refs: Known,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBgpSpec {
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub ipv6_address: Option<String>,
    #[serde(default, rename = "ipv4IPIPTunnelAddr")]
    pub ipv4_ipip_tunnel_addr: Option<String>,
    #[serde(default)]
    pub as_number: Option<serde_json::Value>,
    #[serde(default, rename = "routeReflectorClusterID")]
    pub route_reflector_cluster_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeWireguardSpec {
    #[serde(default, rename = "interfaceIPv4Address")]
    pub interface_ipv4_address: Option<String>,
    #[serde(default, rename = "interfaceIPv6Address")]
    pub interface_ipv6_address: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalicoNodeStatus {
    #[serde(default)]
    pub wireguard_public_key: Option<String>,
    #[serde(default)]
    pub wireguard_public_key_v6: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

/// One entry of `failsafeInboundHostPorts`/`failsafeOutboundHostPorts`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub struct ProtoPort {
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub port: u16,
    #[serde(default)]
    pub net: Option<String>,
}

fn default_protocol() -> String {
    "tcp".into()
}

/// The FelixConfiguration fields that decide what the dataplane must look like. Every field is
/// optional: unset means Felix's default (or the `default` object's value, for per-node ones).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixConfigurationSpec {
    pub vxlan_enabled: Option<bool>,
    #[serde(rename = "vxlanVNI")]
    pub vxlan_vni: Option<u32>,
    pub vxlan_port: Option<u16>,
    #[serde(rename = "vxlanMTU")]
    pub vxlan_mtu: Option<u32>,
    #[serde(rename = "vxlanMTUV6")]
    pub vxlan_mtu_v6: Option<u32>,
    pub ipip_enabled: Option<bool>,
    #[serde(rename = "ipipMTU")]
    pub ipip_mtu: Option<u32>,
    pub wireguard_enabled: Option<bool>,
    #[serde(rename = "wireguardEnabledV6")]
    pub wireguard_enabled_v6: Option<bool>,
    #[serde(rename = "wireguardMTU")]
    pub wireguard_mtu: Option<u32>,
    #[serde(rename = "wireguardMTUV6")]
    pub wireguard_mtu_v6: Option<u32>,
    pub wireguard_listening_port: Option<u16>,
    #[serde(rename = "wireguardListeningPortV6")]
    pub wireguard_listening_port_v6: Option<u16>,
    pub wireguard_routing_rule_priority: Option<u32>,
    pub wireguard_interface_name: Option<String>,
    #[serde(rename = "wireguardInterfaceNameV6")]
    pub wireguard_interface_name_v6: Option<String>,
    pub wireguard_host_encryption_enabled: Option<bool>,
    pub wireguard_keep_alive: Option<String>,
    pub mtu_iface_pattern: Option<String>,
    pub bpf_enabled: Option<bool>,
    pub bpf_attach_type: Option<String>,
    pub bpf_data_iface_pattern: Option<String>,
    pub bpf_map_size_conntrack: Option<u64>,
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    pub route_table_range: Option<serde_json::Value>,
    pub route_table_ranges: Option<serde_json::Value>,
    pub device_route_protocol: Option<u8>,
    pub remove_external_routes: Option<bool>,
    pub program_cluster_routes: Option<String>,
    pub route_source: Option<String>,
    pub route_refresh_interval: Option<String>,
    pub interface_refresh_interval: Option<String>,
    pub iptables_refresh_interval: Option<String>,
    pub nftables_refresh_interval: Option<String>,
    pub ipsets_refresh_interval: Option<String>,
    pub iptables_backend: Option<String>,
    pub nftables_mode: Option<String>,
    pub chain_insert_mode: Option<String>,
    pub default_endpoint_to_host_action: Option<String>,
    pub interface_prefix: Option<String>,
    pub interface_exclude: Option<String>,
    pub nat_outgoing_exclusions: Option<String>,
    pub ip_forwarding: Option<String>,
    pub health_enabled: Option<bool>,
    pub health_host: Option<String>,
    pub health_port: Option<u16>,
    pub prometheus_metrics_enabled: Option<bool>,
    pub prometheus_metrics_port: Option<u16>,
    pub log_severity_screen: Option<String>,
    pub reporting_interval: Option<String>,
    pub ipv4_normal_route_priority: Option<u32>,
    /// Felix's `Ipv6Support` (default true): false makes it ignore IPv6 altogether.
    #[serde(rename = "ipv6Support")]
    pub ipv6_support: Option<bool>,
    #[serde(rename = "vxlanEnabledV6")]
    pub vxlan_enabled_v6: Option<bool>,
}

impl FelixConfigurationSpec {
    /// Per-node values override the global ones field by field, as Felix merges them.
    pub fn overlay(&self, over: &Self) -> Self {
        macro_rules! pick {
            ($($f:ident),* $(,)?) => { Self { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        pick!(
            vxlan_enabled,
            vxlan_vni,
            vxlan_port,
            vxlan_mtu,
            vxlan_mtu_v6,
            ipip_enabled,
            ipip_mtu,
            wireguard_enabled,
            wireguard_enabled_v6,
            wireguard_mtu,
            wireguard_mtu_v6,
            wireguard_listening_port,
            wireguard_listening_port_v6,
            wireguard_routing_rule_priority,
            wireguard_interface_name,
            wireguard_interface_name_v6,
            wireguard_host_encryption_enabled,
            wireguard_keep_alive,
            mtu_iface_pattern,
            bpf_enabled,
            bpf_attach_type,
            bpf_data_iface_pattern,
            bpf_map_size_conntrack,
            failsafe_inbound_host_ports,
            failsafe_outbound_host_ports,
            route_table_range,
            route_table_ranges,
            device_route_protocol,
            remove_external_routes,
            program_cluster_routes,
            route_source,
            route_refresh_interval,
            interface_refresh_interval,
            iptables_refresh_interval,
            nftables_refresh_interval,
            ipsets_refresh_interval,
            iptables_backend,
            nftables_mode,
            chain_insert_mode,
            default_endpoint_to_host_action,
            interface_prefix,
            interface_exclude,
            nat_outgoing_exclusions,
            ip_forwarding,
            health_enabled,
            health_host,
            health_port,
            prometheus_metrics_enabled,
            prometheus_metrics_port,
            log_severity_screen,
            reporting_interval,
            ipv4_normal_route_priority,
            ipv6_support,
            vxlan_enabled_v6,
        )
    }
}

/// `BGPConfiguration` (`api/pkg/apis/projectcalico/v3/bgpconfig.go`): `default` is global,
/// `node.<name>` per node. confd reads `asNumber` and `nodeToNodeMeshEnabled` only from
/// `default`, `listenPort` from both (`confd/pkg/backends/calico/client.go`
/// `updateBGPConfigCache`). Fields that do not change which sessions exist are kept as values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    #[serde(default)]
    pub as_number: Option<serde_json::Value>,
    #[serde(default)]
    pub node_to_node_mesh_enabled: Option<bool>,
    #[serde(default)]
    pub listen_port: Option<u16>,
    #[serde(default)]
    pub log_severity_screen: Option<String>,
    #[serde(default, rename = "serviceClusterIPs")]
    pub service_cluster_ips: Option<serde_json::Value>,
    #[serde(default, rename = "serviceExternalIPs")]
    pub service_external_ips: Option<serde_json::Value>,
    #[serde(default, rename = "serviceLoadBalancerIPs")]
    pub service_load_balancer_ips: Option<serde_json::Value>,
    #[serde(default)]
    pub service_load_balancer_aggregation: Option<String>,
    #[serde(default)]
    pub communities: Option<serde_json::Value>,
    #[serde(default)]
    pub prefix_advertisements: Option<serde_json::Value>,
    #[serde(default)]
    pub node_mesh_password: Option<serde_json::Value>,
    #[serde(default)]
    pub node_mesh_max_restart_time: Option<String>,
    #[serde(default)]
    pub bind_mode: Option<String>,
    #[serde(default)]
    pub ignored_interfaces: Option<Vec<String>>,
    #[serde(default, rename = "localWorkloadPeeringIPV4")]
    pub local_workload_peering_ipv4: Option<String>,
    #[serde(default, rename = "localWorkloadPeeringIPV6")]
    pub local_workload_peering_ipv6: Option<String>,
    #[serde(default)]
    pub program_cluster_routes: Option<String>,
    #[serde(default)]
    pub ipv4_normal_route_priority: Option<u32>,
    #[serde(default)]
    pub ipv6_normal_route_priority: Option<u32>,
}

/// `BGPPeer` (`api/pkg/apis/projectcalico/v3/bgppeer.go`). Which nodes peer with what is
/// decided by `node`/`nodeSelector` (the local side: none = every node, a global peering),
/// `peerIP` or `peerSelector` (the remote side) and `localWorkloadSelector`
/// (`confd/pkg/backends/calico/client.go` `updatePeersV1`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerSpec {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_selector: Option<String>,
    #[serde(default, rename = "peerIP")]
    pub peer_ip: Option<String>,
    #[serde(default)]
    pub peer_selector: Option<String>,
    #[serde(default)]
    pub as_number: Option<serde_json::Value>,
    #[serde(default, rename = "localASNumber")]
    pub local_as_number: Option<serde_json::Value>,
    #[serde(default)]
    pub local_workload_selector: Option<String>,
    /// `Auto` (default) or `Manual`: whether confd adds the reverse peering on the peer nodes.
    #[serde(default)]
    pub reverse_peering: Option<String>,
    #[serde(default)]
    pub keep_original_next_hop: Option<bool>,
    #[serde(default)]
    pub next_hop_mode: Option<String>,
    #[serde(default)]
    pub password: Option<serde_json::Value>,
    #[serde(default)]
    pub source_address: Option<String>,
    #[serde(default)]
    pub failure_detection_mode: Option<String>,
    #[serde(default)]
    pub restart_mode: Option<String>,
    #[serde(default)]
    pub max_restart_time: Option<String>,
    #[serde(default)]
    pub bird_gateway_mode: Option<String>,
    #[serde(default, rename = "numAllowedLocalASNumbers")]
    pub num_allowed_local_as_numbers: Option<i32>,
    #[serde(default, rename = "ttlSecurity")]
    pub ttl_security: Option<u8>,
    #[serde(default)]
    pub filters: Option<Vec<String>>,
    #[serde(default)]
    pub reachable_by: Option<String>,
    #[serde(default)]
    pub keepalive_time: Option<String>,
}
