#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Guest test: a Felix-shaped dual-stack WireGuard node pair in namespaces n1 (node-a) and n2
# (node-b), verified by the agent against a datastore, healthy and with one fault at a time.
#
# Each node, as Felix programs it (shared/reference/calico-dataplane.md §3), per family:
#   wireguard.cali (IPv4) and wg-v6.cali (IPv6): their own private keys, listen ports 51820 and
#     51821, fwmark 0x200000, MTU 1440 and 1420 (underlay 1500 minus 60 and 80), up, the
#     node's interfaceIPv4Address /32 and interfaceIPv6Address /128, one peer each (the other
#     node's key for that family, endpoint <node IP of the family>:<port>, allowed IPs its
#     block and tunnel address)
#   table 1 (IPv4) and 2 (IPv6): <peer block> and <peer tunnel IP> dev <device> scope link,
#     throw <own block>
#   rule 99 in each family: not from all fwmark 0x200000/0x200000 lookup <table>
#   main: the peer's block via its node IP (as BIRD would), a blackhole for the own block
# The datastore (/tmp/ds/calico.yaml) holds both pools, all four blocks, both Nodes with their
# addresses, WireGuard interface addresses and public keys (status.wireguardPublicKey and
# wireguardPublicKeyV6), and a FelixConfiguration with wireguardEnabled and wireguardEnabledV6.
#
# Phases, each `agent diag --json` in n1 between PHASE-<name>-BEGIN/END (one line):
#   healthy; for IPv4 peer-missing, allowed-ips, rule-missing, address-missing, mtu,
#   listen-port, route-missing; the same with a `-v6` suffix for wg-v6.cali; repaired.
#   After the healthy one, DIAG-TEXT-BEGIN/END: the human diag.
# Also KERNEL=<release>, PING-RC=<rc> and PING6-RC=<rc> (before), PING-AFTER-RC=<rc> and
# PING6-AFTER-RC=<rc> (after all repairs).
# Exit status: 0, or 10 when the setup itself failed.
set -u
# shellcheck source=lib.sh
. /guest/lib.sh

print_kernel
load_modules veth wireguard
no_ipv6
two_nodes
for n in n1 n2; do
    ip netns exec "$n" sysctl -w net.ipv6.conf.all.disable_ipv6=0 >/dev/null
    ip netns exec "$n" sysctl -w net.ipv6.conf.default.disable_ipv6=0 >/dev/null
    ip netns exec "$n" sysctl -w net.ipv6.conf.all.forwarding=1 >/dev/null
done
ip -n n1 addr add fd00:50::1/64 dev eth0 nodad
ip -n n2 addr add fd00:50::2/64 dev eth0 nodad
ip -n n1 neigh replace fd00:50::2 lladdr 02:00:00:00:50:02 dev eth0 nud permanent
ip -n n2 neigh replace fd00:50::1 lladdr 02:00:00:00:50:01 dev eth0 nud permanent

# Per family: device, listen port, MTU, table, IP flag.
dev_of() { if [ "$1" = 6 ]; then echo wg-v6.cali; else echo wireguard.cali; fi; }
port_of() { if [ "$1" = 6 ]; then echo 51821; else echo 51820; fi; }
mtu_of() { if [ "$1" = 6 ]; then echo 1420; else echo 1440; fi; }
table_of() { if [ "$1" = 6 ]; then echo 2; else echo 1; fi; }
host_of() { if [ "$1" = 6 ]; then echo 128; else echo 32; fi; }
# Without duplicate address detection an IPv6 address is usable at once.
nodad_of() { if [ "$1" = 6 ]; then echo nodad; fi; }

umask 077
mkdir -p /tmp/wg /tmp/ds
for f in 4 6; do
    for n in n1 n2; do
        wg genkey >"/tmp/wg/$n-$f.key" || { echo "GUEST-ERROR: wg genkey failed" >&2; exit 10; }
        wg pubkey <"/tmp/wg/$n-$f.key" >"/tmp/wg/$n-$f.pub"
        ip -n "$n" link add "$(dev_of $f)" type wireguard || { echo "GUEST-ERROR: cannot create $(dev_of $f)" >&2; exit 10; }
    done
done
umask 022

# peer FAMILY NS PEER_PUB PEER_BLOCK PEER_TUNNEL PEER_ENDPOINT
peer() {
    ip netns exec "$2" wg set "$(dev_of "$1")" peer "$3" allowed-ips "$4,$5/$(host_of "$1")" endpoint "$6"
}

# wg_node FAMILY NS ADDR OWN_BLOCK PEER_BLOCK PEER_TUNNEL PEER_NODE_IP PEER_ENDPOINT PEER_NS
wg_node() {
    _f=$1 _ns=$2
    _dev=$(dev_of "$_f") _t=$(table_of "$_f") _ip="ip -$_f -n $_ns"
    ip netns exec "$_ns" wg set "$_dev" private-key "/tmp/wg/$_ns-$_f.key" listen-port "$(port_of "$_f")" fwmark 0x200000 || exit 10
    peer "$_f" "$_ns" "$(cat "/tmp/wg/$9-$_f.pub")" "$5" "$6" "$8" || exit 10
    $_ip link set "$_dev" mtu "$(mtu_of "$_f")" up
    # shellcheck disable=SC2046 # no flag for IPv4
    $_ip addr add "$3/$(host_of "$_f")" dev "$_dev" $(nodad_of "$_f")
    $_ip route add "$5" dev "$_dev" scope link table "$_t"
    $_ip route add "$6/$(host_of "$_f")" dev "$_dev" scope link table "$_t"
    $_ip route add throw "$4" table "$_t"
    $_ip rule add not fwmark 0x200000/0x200000 lookup "$_t" priority 99
    $_ip route add "$5" via "$7" dev eth0 proto bird
    $_ip route add blackhole "$4" proto bird
}
wg_node 4 n1 10.244.0.1 10.244.0.0/26 10.244.1.0/26 10.244.1.1 192.168.50.2 192.168.50.2:51820 n2
wg_node 4 n2 10.244.1.1 10.244.1.0/26 10.244.0.0/26 10.244.0.1 192.168.50.1 192.168.50.1:51820 n1
wg_node 6 n1 fd00:244::1 fd00:244::/122 fd00:244::40/122 fd00:244::41 fd00:50::2 '[fd00:50::2]:51821' n2
wg_node 6 n2 fd00:244::41 fd00:244::40/122 fd00:244::/122 fd00:244::1 fd00:50::1 '[fd00:50::1]:51821' n1

pub() { cat "/tmp/wg/$1.pub"; }
cat >/tmp/ds/calico.yaml <<YAML
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, vxlanMode: Never, ipipMode: Never, natOutgoing: false, blockSize: 26}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv6-ippool}
spec: {cidr: "fd00:244::/112", vxlanMode: Never, ipipMode: Never, natOutgoing: false, blockSize: 122}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {wireguardEnabled: true, wireguardEnabledV6: true}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-a}
spec:
  bgp: {ipv4Address: 192.168.50.1/24, ipv6Address: "fd00:50::1/64"}
  wireguard: {interfaceIPv4Address: 10.244.0.1, interfaceIPv6Address: "fd00:244::1"}
status: {wireguardPublicKey: $(pub n1-4), wireguardPublicKeyV6: $(pub n1-6)}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-b}
spec:
  bgp: {ipv4Address: 192.168.50.2/24, ipv6Address: "fd00:50::2/64"}
  wireguard: {interfaceIPv4Address: 10.244.1.1, interfaceIPv6Address: "fd00:244::41"}
status: {wireguardPublicKey: $(pub n2-4), wireguardPublicKeyV6: $(pub n2-6)}
YAML
# block NAME CIDR NODE TYPE
block() {
    cat >>/tmp/ds/calico.yaml <<YAML
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: $1}
spec:
  cidr: "$2"
  affinity: host:$3
  allocations: [null, 0]
  attributes:
  - {handle_id: $4-$3, secondary: {node: $3, type: $4}}
YAML
}
block 10-244-0-0-26 10.244.0.0/26 node-a wireguardTunnelAddress
block 10-244-1-0-26 10.244.1.0/26 node-b wireguardTunnelAddress
block fd00-244---122 fd00:244::/122 node-a wireguardV6TunnelAddress
block fd00-244--40-122 fd00:244::40/122 node-b wireguardV6TunnelAddress

# ping_all SUFFIX: both families across the tunnels; the first packet triggers the handshake.
ping_all() {
    ip netns exec n1 ping -c 3 -i 0.2 -W 5 -I 10.244.0.1 10.244.1.1 >/tmp/ping.out 2>&1
    _rc4=$?
    echo "PING$1-RC=$_rc4"
    ip netns exec n1 ping -6 -c 3 -i 0.2 -W 5 -I fd00:244::1 fd00:244::41 >>/tmp/ping.out 2>&1
    _rc6=$?
    echo "PING6$1-RC=$_rc6"
    [ "$_rc4" -eq 0 ] && [ "$_rc6" -eq 0 ]
}
if ! ping_all ""; then
    cat /tmp/ping.out
    ip netns exec n1 wg show
    ip -n n1 rule
    ip -n n1 -6 rule
    ip -n n1 route show table all
    ip -n n1 -6 route show table all
    exit 10
fi

DIAG_ARGS="--no-ebpf --no-daemon --datastore /tmp/ds --node-name node-a"

# phase NAME: the agent's view of n1 as one JSON line.
phase() {
    # shellcheck disable=SC2086 # word splitting wanted
    ip netns exec n1 agent diag --json $DIAG_ARGS 2>"/tmp/$1.err" | tr -s ' \n' ' ' >"/tmp/$1.json"
    echo >>"/tmp/$1.json"
    print_block "PHASE-$1" "/tmp/$1.json"
    if [ -s "/tmp/$1.err" ]; then print_block "PHASE-$1-STDERR" "/tmp/$1.err"; fi
}

phase healthy
# shellcheck disable=SC2086
ip netns exec n1 agent diag $DIAG_ARGS >/tmp/diag.txt 2>&1
print_block DIAG-TEXT /tmp/diag.txt

# faults FAMILY SUFFIX ADDR PEER_BLOCK PEER_TUNNEL PEER_ENDPOINT: one fault at a time on n1's
# device of FAMILY, each repaired before the next.
faults() {
    _f=$1 _s=$2
    _dev=$(dev_of "$_f") _t=$(table_of "$_f") _h=$(host_of "$_f") _ip="ip -$_f -n n1"
    _pub=$(pub "n2-$_f")

    ip netns exec n1 wg set "$_dev" peer "$_pub" remove
    phase "peer-missing$_s"
    peer "$_f" n1 "$_pub" "$4" "$5" "$6"

    ip netns exec n1 wg set "$_dev" peer "$_pub" allowed-ips "$5/$_h"
    phase "allowed-ips$_s"
    peer "$_f" n1 "$_pub" "$4" "$5" "$6"

    $_ip rule del priority 99
    phase "rule-missing$_s"
    $_ip rule add not fwmark 0x200000/0x200000 lookup "$_t" priority 99

    # For IPv4 the kernel also flushes every route through a device that loses its last
    # address, so WireGuard's table loses its routes too (Felix re-adds both).
    $_ip addr del "$3/$_h" dev "$_dev"
    phase "address-missing$_s"
    # shellcheck disable=SC2046 # no flag for IPv4
    $_ip addr add "$3/$_h" dev "$_dev" $(nodad_of "$_f")
    $_ip route replace "$4" dev "$_dev" scope link table "$_t"
    $_ip route replace "$5/$_h" dev "$_dev" scope link table "$_t"

    $_ip link set "$_dev" mtu 1400
    phase "mtu$_s"
    $_ip link set "$_dev" mtu "$(mtu_of "$_f")"

    ip netns exec n1 wg set "$_dev" listen-port 51999
    phase "listen-port$_s"
    ip netns exec n1 wg set "$_dev" listen-port "$(port_of "$_f")"

    $_ip route del "$4" dev "$_dev" table "$_t"
    phase "route-missing$_s"
    $_ip route add "$4" dev "$_dev" scope link table "$_t"
}
faults 4 "" 10.244.0.1 10.244.1.0/26 10.244.1.1 192.168.50.2:51820
faults 6 -v6 fd00:244::1 fd00:244::40/122 fd00:244::41 '[fd00:50::2]:51821'

phase repaired
ping_all -AFTER
exit 0
