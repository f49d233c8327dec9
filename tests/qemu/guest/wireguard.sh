#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Guest test: Calico WireGuard mode between two "nodes" (netns n1, n2 joined by a veth), each
# with a wireguard.cali device as Felix configures it (listen port 51820, MTU 1440, the peer's
# tunnel address and block as allowed IPs, the peer node's IP as endpoint):
#   n1: wireguard.cali 10.244.0.1/32, 10.244.1.0/26 dev wireguard.cali
#   n2: wireguard.cali 10.244.1.1/32, 10.244.0.0/26 dev wireguard.cali
# The agent runs in n1 without --iface while n1 pings n2's tunnel address 5 times, then
# `agent diag --json --no-ebpf` runs in n1.
#
# Prints KERNEL=<release>, PING-RC=<rc>, FLOWS-JSON-BEGIN/END, AGENT-STDERR-BEGIN/END,
# AGENT-EXIT=<rc>, TC-AFTER-BEGIN/END, TC-AFTER-LEFTOVER=0|1, DIAG-JSON-BEGIN/END,
# DIAG-STDERR-BEGIN/END, DIAG-EXIT=<rc>.
# Exit status: the flows run's if non-zero, else diag's; 10 when the setup itself failed.
set -u
# shellcheck source=lib.sh
. /guest/lib.sh

WG=wireguard.cali
print_kernel
load_modules veth sch_ingress cls_bpf wireguard
no_ipv6
two_nodes

umask 077
mkdir -p /tmp/wg
for n in n1 n2; do
    wg genkey >"/tmp/wg/$n.key" || { echo "GUEST-ERROR: wg genkey failed" >&2; exit 10; }
    wg pubkey <"/tmp/wg/$n.key" >"/tmp/wg/$n.pub"
    ip -n "$n" link add "$WG" type wireguard || { echo "GUEST-ERROR: cannot create $WG" >&2; exit 10; }
done
umask 022

# wg_node NS KEY_OF_NS ADDR PEER_PUB PEER_BLOCK PEER_ADDR PEER_NODE_IP
wg_node() {
    ip netns exec "$1" wg set "$WG" private-key "$2" listen-port 51820 \
        peer "$(cat "$4")" allowed-ips "$5,$6/32" endpoint "$7:51820" || exit 10
    ip -n "$1" link set "$WG" mtu 1440 up
    ip -n "$1" addr add "$3/32" dev "$WG"
    ip -n "$1" route add "$5" dev "$WG"
}
wg_node n1 /tmp/wg/n1.key 10.244.0.1 /tmp/wg/n2.pub 10.244.1.0/26 10.244.1.1 192.168.50.2
wg_node n2 /tmp/wg/n2.key 10.244.1.1 /tmp/wg/n1.pub 10.244.0.0/26 10.244.0.1 192.168.50.1

# The first packet triggers the handshake.
if ! ip netns exec n1 ping -c 5 -i 0.2 -W 5 -I 10.244.0.1 10.244.1.1; then
    echo "GUEST-ERROR: 10.244.1.1 unreachable over $WG before the agent started" >&2
    ip netns exec n1 wg show
    exit 10
fi

ip netns exec n1 agent flows --seconds 6 --json >/tmp/flows.json 2>/tmp/agent.err &
pid=$!
sleep 1.5
wait_attached n1 "$WG" "$pid"
ip netns exec n1 ping -c 5 -i 0.2 -I 10.244.0.1 10.244.1.1 >/tmp/ping.out 2>&1
echo "PING-RC=$?"
finish_agent "$pid"
rc=$?
print_tc_after n1 "$WG" eth0

# GUEST_DIAG_ARGS (run.sh: QEMU_PASS_ENV=GUEST_DIAG_ARGS) overrides the arguments, e.g. for a
# binary older than diag's --no-ebpf.
# shellcheck disable=SC2086 # word splitting wanted
ip netns exec n1 agent diag ${GUEST_DIAG_ARGS:---json --no-ebpf} >/tmp/diag.json 2>/tmp/diag.err
drc=$?
print_block DIAG-JSON /tmp/diag.json
print_block DIAG-STDERR /tmp/diag.err
echo "DIAG-EXIT=$drc"

[ "$rc" -ne 0 ] && exit "$rc"
exit "$drc"
