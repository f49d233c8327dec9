#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Guest test: the agent's TC programs on a Calico workload veth (as clsact filters on kernels
# without TCX, as TCX links on 6.6 and later). Five pings from the host to the pod, with static
# neighbours and IPv6 off, so the counters are exact: 5 echo requests out of the host side
# (egress of cali1234567890a), 5 replies in (ingress).
#
# Prints KERNEL=<release>, FLOWS-JSON-BEGIN/END (the agent's JSON), AGENT-STDERR-BEGIN/END,
# AGENT-EXIT=<rc>, TC-AFTER-BEGIN/END (filters and bpftool net after the agent exited) and
# TC-AFTER-LEFTOVER=0|1. Exit status: the agent's; 10 when the setup itself failed.
set -u
# shellcheck source=lib.sh
. /guest/lib.sh

HOST_IF=cali1234567890a
print_kernel
load_modules veth sch_ingress cls_bpf
no_ipv6

make_netns pod
ip link add "$HOST_IF" address ee:ee:ee:ee:ee:ee type veth \
    peer name eth0 address 02:00:00:00:00:02 netns pod || exit 10
ip addr add 10.0.0.1/24 dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n pod addr add 10.0.0.2/24 dev eth0
ip -n pod link set eth0 up
ip neigh replace 10.0.0.2 lladdr 02:00:00:00:00:02 dev "$HOST_IF" nud permanent
ip -n pod neigh replace 10.0.0.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent

if ! ping -c 1 -W 5 10.0.0.2 >/dev/null; then
    echo "GUEST-ERROR: 10.0.0.2 unreachable before the agent started" >&2
    exit 10
fi

agent flows --seconds 6 --json --iface "$HOST_IF" >/tmp/flows.json 2>/tmp/agent.err &
pid=$!
sleep 1.5
wait_attached "" "$HOST_IF" "$pid"
ping -c 5 -i 0.2 10.0.0.2 >/tmp/ping.out 2>&1
echo "PING-RC=$?"
finish_agent "$pid"
rc=$?
print_tc_after "" "$HOST_IF"
exit "$rc"
