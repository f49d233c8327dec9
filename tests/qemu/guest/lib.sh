# shellcheck shell=sh
# Helpers sourced by the guest scripts (run by tests/qemu/run.sh inside the VM, as /guest/*).
# POSIX sh; the guest's /bin/sh is bash, its other tools are iproute2, bpftool, wg and busybox.

# Loads kernel modules, failing loudly.
load_modules() {
    for m in "$@"; do
        modprobe "$m" || { echo "GUEST-ERROR: modprobe $m failed" >&2; exit 10; }
    done
}

# Prints `KERNEL=<release>` for the host side.
print_kernel() {
    echo "KERNEL=$(uname -r)"
}

# IPv6 off in the root namespace (no link-local addresses, router solicitations or MLD).
no_ipv6() {
    sysctl -w net.ipv6.conf.all.disable_ipv6=1 >/dev/null
    sysctl -w net.ipv6.conf.default.disable_ipv6=1 >/dev/null
}

# Creates network namespace $1 with lo up and IPv6 off, for the devices in it now and later.
make_netns() {
    ip netns add "$1"
    ip netns exec "$1" sysctl -w net.ipv6.conf.all.disable_ipv6=1 >/dev/null
    ip netns exec "$1" sysctl -w net.ipv6.conf.default.disable_ipv6=1 >/dev/null
    ip -n "$1" link set lo up
}

# Runs `ip netns exec NS CMD...`, or CMD... when NS is empty (the root namespace).
in_ns() {
    _ns=$1
    shift
    if [ -n "$_ns" ]; then ip netns exec "$_ns" "$@"; else "$@"; fi
}

# Two namespaces n1, n2 as two nodes: eth0 in each, joined by a veth, 192.168.50.1 and .2/24,
# static (permanent) neighbours, a default route via the other node (the agent takes the
# default route's device as the underlay) and IPv4 forwarding on, as on a Calico node.
two_nodes() {
    make_netns n1
    make_netns n2
    ip netns exec n1 sysctl -w net.ipv4.ip_forward=1 >/dev/null
    ip netns exec n2 sysctl -w net.ipv4.ip_forward=1 >/dev/null
    ip -n n1 link add eth0 address 02:00:00:00:50:01 type veth \
        peer name eth0 address 02:00:00:00:50:02 netns n2
    ip -n n1 addr add 192.168.50.1/24 dev eth0
    ip -n n2 addr add 192.168.50.2/24 dev eth0
    ip -n n1 link set eth0 up
    ip -n n2 link set eth0 up
    ip -n n1 neigh replace 192.168.50.2 lladdr 02:00:00:00:50:02 dev eth0 nud permanent
    ip -n n2 neigh replace 192.168.50.1 lladdr 02:00:00:00:50:01 dev eth0 nud permanent
    ip -n n1 route add default via 192.168.50.2 dev eth0
    ip -n n2 route add default via 192.168.50.1 dev eth0
}

# Waits until the agent's egress program is attached in namespace $1 (empty: root) to device
# $2, or the agent (pid $3) has exited. clsact filters show in `tc filter show`; TCX links
# (kernel >= 6.6) as a BPF link of the program (bpftool 7.1 does not list TCX by device).
# Gives up after 60 s (TCG is slow at loading).
wait_attached() {
    _ns=$1 _dev=$2 _pid=$3 _i=0
    while [ "$_i" -lt 600 ]; do
        kill -0 "$_pid" 2>/dev/null || return 1
        if in_ns "$_ns" tc filter show dev "$_dev" egress 2>/dev/null | grep dp_tc_egress >/dev/null; then
            return 0
        fi
        _id=$(bpftool prog show name dp_tc_egress 2>/dev/null | sed -n 's/^\([0-9][0-9]*\): .*/\1/p' | head -n 1)
        if [ -n "$_id" ] && bpftool link show 2>/dev/null | grep -E "prog $_id( |\$)" >/dev/null; then
            return 0
        fi
        sleep 0.1
        _i=$((_i + 1))
    done
    echo "GUEST-ERROR: dp_tc_egress not attached to $_dev after 60 s" >&2
    return 1
}

# Waits for the agent (pid $1) started with its output in /tmp/flows.json and
# /tmp/agent.err, prints both blocks and AGENT-EXIT=<rc>, and returns its exit status.
finish_agent() {
    wait "$1"
    _rc=$?
    print_block FLOWS-JSON /tmp/flows.json
    print_block AGENT-STDERR /tmp/agent.err
    echo "AGENT-EXIT=$_rc"
    return "$_rc"
}

# Prints file $2 between `$1-BEGIN` and `$1-END` lines (the host parses these blocks).
print_block() {
    echo "$1-BEGIN"
    if [ -s "$2" ]; then
        cat "$2"
        # The block's end marker must start a line.
        [ -z "$(tail -c 1 "$2")" ] || echo
    fi
    echo "$1-END"
}

# After the agent has exited: the qdiscs and tc filters on devices $2... in namespace $1
# (empty: root) and bpftool's view, between TC-AFTER-BEGIN/END; then TC-AFTER-LEFTOVER=1 if
# any of ours (dp_tc_*) is still attached or loaded, else 0.
print_tc_after() {
    _ns=$1
    shift
    echo "TC-AFTER-BEGIN"
    for _dev in "$@"; do
        echo "# tc qdisc show dev $_dev"
        in_ns "$_ns" tc qdisc show dev "$_dev" 2>&1
        echo "# tc filter show dev $_dev ingress"
        in_ns "$_ns" tc filter show dev "$_dev" ingress 2>&1
        echo "# tc filter show dev $_dev egress"
        in_ns "$_ns" tc filter show dev "$_dev" egress 2>&1
    done
    echo "# bpftool net show"
    in_ns "$_ns" bpftool net show 2>&1
    echo "# bpftool prog show (loaded programs, all namespaces)"
    bpftool prog show 2>&1
    echo "# bpftool link show"
    bpftool link show 2>&1
    echo "TC-AFTER-END"
    if { for _dev in "$@"; do
        in_ns "$_ns" tc filter show dev "$_dev" ingress
        in_ns "$_ns" tc filter show dev "$_dev" egress
    done
        in_ns "$_ns" bpftool net show
        bpftool prog show; } 2>/dev/null | grep dp_tc_ >/dev/null; then
        echo "TC-AFTER-LEFTOVER=1"
    else
        echo "TC-AFTER-LEFTOVER=0"
    fi
}
