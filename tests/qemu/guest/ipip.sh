#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Guest test: Calico IPIP mode between two "nodes" (netns n1, n2 joined by a veth). Each
# namespace gets the ipip module's tunl0 (an L3 device: no Ethernet header), addressed and
# routed the way Felix programs it:
#   n1: tunl0 10.244.0.1/32, 10.244.1.0/26 via 192.168.50.2 dev tunl0 onlink
#   n2: tunl0 10.244.1.1/32, 10.244.0.0/26 via 192.168.50.1 dev tunl0 onlink
# The agent runs in n1 without --iface: it must pick tunl0 (tunnel) and eth0 (underlay, the
# default route's device) by itself, while n1 pings n2's tunnel address 5 times.
#
# Prints KERNEL=<release>, PING-RC=<rc>, FLOWS-JSON-BEGIN/END, AGENT-STDERR-BEGIN/END,
# AGENT-EXIT=<rc>, TC-AFTER-BEGIN/END, TC-AFTER-LEFTOVER=0|1.
# Exit status: the agent's; 10 when the setup itself failed (e.g. no connectivity).
set -u
# shellcheck source=lib.sh
. /guest/lib.sh

print_kernel
load_modules veth sch_ingress cls_bpf ipip
no_ipv6
two_nodes

ip -n n1 link show tunl0 >/dev/null || { echo "GUEST-ERROR: no tunl0 in n1" >&2; exit 10; }
ip -n n1 link set tunl0 up
ip -n n2 link set tunl0 up
ip -n n1 addr add 10.244.0.1/32 dev tunl0
ip -n n2 addr add 10.244.1.1/32 dev tunl0
ip -n n1 route add 10.244.1.0/26 via 192.168.50.2 dev tunl0 onlink
ip -n n2 route add 10.244.0.0/26 via 192.168.50.1 dev tunl0 onlink

if ! ip netns exec n1 ping -c 5 -i 0.2 -W 5 -I 10.244.0.1 10.244.1.1; then
    echo "GUEST-ERROR: 10.244.1.1 unreachable over tunl0 before the agent started" >&2
    ip -n n1 -d link show tunl0
    ip -n n1 route
    exit 10
fi

ip netns exec n1 agent flows --seconds 6 --json >/tmp/flows.json 2>/tmp/agent.err &
pid=$!
sleep 1.5
wait_attached n1 tunl0 "$pid"
ip netns exec n1 ping -c 5 -i 0.2 -I 10.244.0.1 10.244.1.1 >/tmp/ping.out 2>&1
echo "PING-RC=$?"
finish_agent "$pid"
rc=$?
print_tc_after n1 tunl0 eth0
exit "$rc"
