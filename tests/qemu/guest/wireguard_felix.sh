#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Guest test: a Felix-shaped WireGuard node pair in namespaces n1 (node-a) and n2 (node-b),
# verified by the agent against a datastore, healthy and with one fault at a time.
#
# Each node, as Felix programs it (shared/reference/calico-dataplane.md §3):
#   wireguard.cali: private key, listen-port 51820, fwmark 0x200000, MTU 1440, up,
#     the node's interfaceIPv4Address /32, one peer (the other node's key, endpoint
#     <node IP>:51820, allowed IPs its block and tunnel address)
#   table 1: <peer block> and <peer tunnel IP> dev wireguard.cali scope link, throw <own block>
#   rule 99: not from all fwmark 0x200000/0x200000 lookup 1
#   main: the peer's block via its node IP (as BIRD would), a blackhole for the own block
# The datastore (/tmp/ds/calico.yaml) holds the pool, both blocks, both Nodes with their
# wireguard interface addresses and public keys (status.wireguardPublicKey), and a
# FelixConfiguration with wireguardEnabled.
#
# Phases, each `agent diag --json` in n1 between PHASE-<name>-BEGIN/END (one line):
#   healthy, peer-missing, allowed-ips, rule-missing, address-missing, mtu, listen-port,
#   route-missing, repaired. After the healthy one, DIAG-TEXT-BEGIN/END: the human diag.
# Also KERNEL=<release>, PING-RC=<rc> (before), PING-AFTER-RC=<rc> (after all repairs).
# Exit status: 0, or 10 when the setup itself failed.
set -u
# shellcheck source=lib.sh
. /guest/lib.sh

WG=wireguard.cali
print_kernel
load_modules veth wireguard
no_ipv6
two_nodes

umask 077
mkdir -p /tmp/wg /tmp/ds
for n in n1 n2; do
    wg genkey >"/tmp/wg/$n.key" || { echo "GUEST-ERROR: wg genkey failed" >&2; exit 10; }
    wg pubkey <"/tmp/wg/$n.key" >"/tmp/wg/$n.pub"
    ip -n "$n" link add "$WG" type wireguard || { echo "GUEST-ERROR: cannot create $WG" >&2; exit 10; }
done
umask 022
N1_PUB=$(cat /tmp/wg/n1.pub)
N2_PUB=$(cat /tmp/wg/n2.pub)

# peer NS PEER_PUB PEER_BLOCK PEER_TUNNEL PEER_NODE_IP
peer() {
    ip netns exec "$1" wg set "$WG" peer "$2" allowed-ips "$3,$4/32" endpoint "$5:51820"
}

# wg_node NS KEY ADDR OWN_BLOCK PEER_PUB PEER_BLOCK PEER_TUNNEL PEER_NODE_IP
wg_node() {
    ip netns exec "$1" wg set "$WG" private-key "$2" listen-port 51820 fwmark 0x200000 || exit 10
    peer "$1" "$5" "$6" "$7" "$8" || exit 10
    ip -n "$1" link set "$WG" mtu 1440 up
    ip -n "$1" addr add "$3/32" dev "$WG"
    ip -n "$1" route add "$6" dev "$WG" scope link table 1
    ip -n "$1" route add "$7/32" dev "$WG" scope link table 1
    ip -n "$1" route add throw "$4" table 1
    ip -n "$1" rule add not fwmark 0x200000/0x200000 lookup 1 priority 99
    ip -n "$1" route add "$6" via "$8" dev eth0 proto bird
    ip -n "$1" route add blackhole "$4" proto bird
}
wg_node n1 /tmp/wg/n1.key 10.244.0.1 10.244.0.0/26 "$N2_PUB" 10.244.1.0/26 10.244.1.1 192.168.50.2
wg_node n2 /tmp/wg/n2.key 10.244.1.1 10.244.1.0/26 "$N1_PUB" 10.244.0.0/26 10.244.0.1 192.168.50.1

cat >/tmp/ds/calico.yaml <<EOF
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, vxlanMode: Never, ipipMode: Never, natOutgoing: false, blockSize: 26}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {wireguardEnabled: true}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-a}
spec: {bgp: {ipv4Address: 192.168.50.1/24}, wireguard: {interfaceIPv4Address: 10.244.0.1}}
status: {wireguardPublicKey: $N1_PUB}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-b}
spec: {bgp: {ipv4Address: 192.168.50.2/24}, wireguard: {interfaceIPv4Address: 10.244.1.1}}
status: {wireguardPublicKey: $N2_PUB}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: 10-244-0-0-26}
spec:
  cidr: 10.244.0.0/26
  affinity: host:node-a
  allocations: [null, 0]
  attributes:
  - {handle_id: wireguard-tunnel-addr-node-a, secondary: {node: node-a, type: wireguardTunnelAddress}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: 10-244-1-0-26}
spec:
  cidr: 10.244.1.0/26
  affinity: host:node-b
  allocations: [null, 0]
  attributes:
  - {handle_id: wireguard-tunnel-addr-node-b, secondary: {node: node-b, type: wireguardTunnelAddress}}
EOF

# The first packet triggers the handshake.
ip netns exec n1 ping -c 3 -i 0.2 -W 5 -I 10.244.0.1 10.244.1.1 >/tmp/ping.out 2>&1
rc=$?
echo "PING-RC=$rc"
if [ "$rc" -ne 0 ]; then
    cat /tmp/ping.out
    ip netns exec n1 wg show
    ip -n n1 rule
    ip -n n1 route show table all
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

ip netns exec n1 wg set "$WG" peer "$N2_PUB" remove
phase peer-missing
peer n1 "$N2_PUB" 10.244.1.0/26 10.244.1.1 192.168.50.2

ip netns exec n1 wg set "$WG" peer "$N2_PUB" allowed-ips 10.244.1.1/32
phase allowed-ips
peer n1 "$N2_PUB" 10.244.1.0/26 10.244.1.1 192.168.50.2

ip -n n1 rule del priority 99
phase rule-missing
ip -n n1 rule add not fwmark 0x200000/0x200000 lookup 1 priority 99

# The kernel also flushes every route through a device that loses its last IPv4 address, so
# WireGuard's table loses its routes too (Felix re-adds both).
ip -n n1 addr del 10.244.0.1/32 dev "$WG"
phase address-missing
ip -n n1 addr add 10.244.0.1/32 dev "$WG"
ip -n n1 route replace 10.244.1.0/26 dev "$WG" scope link table 1
ip -n n1 route replace 10.244.1.1/32 dev "$WG" scope link table 1

ip -n n1 link set "$WG" mtu 1400
phase mtu
ip -n n1 link set "$WG" mtu 1440

ip netns exec n1 wg set "$WG" listen-port 51999
phase listen-port
ip netns exec n1 wg set "$WG" listen-port 51820

ip -n n1 route del 10.244.1.0/26 dev "$WG" table 1
phase route-missing
ip -n n1 route add 10.244.1.0/26 dev "$WG" scope link table 1

phase repaired
ip netns exec n1 ping -c 3 -i 0.2 -W 5 -I 10.244.0.1 10.244.1.1 >/tmp/ping.out 2>&1
echo "PING-AFTER-RC=$?"
exit 0
