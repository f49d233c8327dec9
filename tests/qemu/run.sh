#!/usr/bin/env bash
# Boots a Debian cloud kernel of the given series in QEMU and runs GUEST_SCRIPT as the
# guest's test, with EXTRA_BINARY... (and their libraries) in the guest's /bin.
#
#   tests/qemu/run.sh KERNEL_SERIES GUEST_SCRIPT [EXTRA_BINARY...]
#   tests/qemu/run.sh 6.1 tests/qemu/guest/workload.sh target/release/agent
#
# The console is streamed to stdout; the exit status is the guest script's, or 99 when the
# guest never reported one (boot failure, panic, timeout). See tests/qemu/README.md.
#
# Environment (all optional):
#   QEMU_CACHE          kernel cache directory        [<repo>/target/qemu]
#   QEMU_KERNEL         exact kernel release, e.g. 6.1.0-56-cloud-amd64 (skips the "newest" pick)
#   QEMU_TIMEOUT        seconds before the VM is killed                            [300]
#   QEMU_MEM            guest memory in MiB                                        [1024]
#   QEMU_SMP            guest CPUs                                                 [1]
#   QEMU_ACCEL          kvm | tcg | auto: kvm if /dev/kvm is usable and boots (a host where it
#                       hangs or aborts is remembered in $QEMU_CACHE/kvm-broken.<uname -r>) [auto]
#   QEMU_KVM_PROBE      seconds KVM gets to reach /init before auto falls back to TCG   [20]
#   QEMU_CPU            -cpu model                                   [host (kvm), max (tcg)]
#   QEMU_MODULES        kernel modules (with their dependencies) to put in the initramfs,
#                       space separated, or "all" for the whole tree
#                       [veth sch_ingress cls_bpf act_bpf ipip wireguard vxlan nf_conntrack]
#   QEMU_TOOLS          host tools copied into the guest's /bin      [ip tc bpftool wg]
#   QEMU_PASS_ENV       names of host variables exported to the guest script, e.g. AGENT_LOG
#   QEMU_APPEND         extra kernel command line
#   QEMU_LOG            also write the console (CRs stripped) to this file
#   QEMU_KEEP_INITRD    copy the built initramfs to this path (for debugging)
set -euo pipefail

readonly EXIT_NO_RESULT=99
PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

die() {
    echo "$PROG: error: $*" >&2
    exit "$EXIT_NO_RESULT"
}
note() { echo "$PROG: $*" >&2; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
SERIES=$1
GUEST_SCRIPT=$2
shift 2
EXTRA_BINARIES=("$@")

CACHE=${QEMU_CACHE:-$REPO/target/qemu}
TIMEOUT=${QEMU_TIMEOUT:-300}
MEM=${QEMU_MEM:-1024}
SMP=${QEMU_SMP:-1}
ACCEL=${QEMU_ACCEL:-auto}
CPU=${QEMU_CPU:-} # default: host with KVM, max with TCG
MODULES=${QEMU_MODULES:-veth sch_ingress cls_bpf act_bpf ipip wireguard vxlan nf_conntrack}
read -r -a TOOLS <<<"${QEMU_TOOLS:-ip tc bpftool wg}"

[[ $SERIES =~ ^[0-9]+\.[0-9]+$ ]] || die "KERNEL_SERIES must look like 6.1 (got '$SERIES')"
[ -f "$GUEST_SCRIPT" ] || die "guest script '$GUEST_SCRIPT' not found"
for b in "${EXTRA_BINARIES[@]}"; do
    if [ ! -f "$b" ] || [ ! -x "$b" ]; then die "extra binary '$b' not found or not executable"; fi
done
for cmd in qemu-system-x86_64 busybox cpio gzip depmod modprobe apt-get apt-cache dpkg-deb ldd timeout flock; do
    command -v "$cmd" >/dev/null ||
        die "'$cmd' not found; install: apt-get install -y --no-install-recommends qemu-system-x86 busybox-static cpio kmod"
done
busybox --list | grep -x modprobe >/dev/null || die "busybox lacks modprobe; install busybox-static"
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
    die "$(command -v busybox) is dynamically linked; install busybox-static"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/qemu-run.XXXXXX")
QPID='' TAILPID='' STAGE=''
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local rc=$?
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    if [ -n "$TAILPID" ]; then kill "$TAILPID" 2>/dev/null || true; fi
    if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Kernel: newest linux-image-<series>…-cloud-amd64-unsigned apt knows of, cached per release.
# ---------------------------------------------------------------------------------------------

# Candidate releases for the series, newest first (e.g. 6.1.0-56-cloud-amd64).
candidates() {
    local re="^linux-image-${SERIES//./\\.}[.-][^ ]*-cloud-amd64-unsigned$"
    apt-cache search --names-only "$re" 2>/dev/null |
        awk '{print $1}' | grep -E "$re" |
        sed -e 's/^linux-image-//' -e 's/-unsigned$//' | sort -rVu || true
}

# Newest release of the series already in the cache.
cached_release() {
    local d
    for d in "$CACHE/$SERIES".*/.ready "$CACHE/$SERIES"-*/.ready; do
        if [ -e "$d" ]; then basename "$(dirname "$d")"; fi
    done | sort -rV | head -n 1
}

# Downloads and unpacks one release into the cache; returns non-zero if apt cannot get it.
fetch_release() {
    local rel=$1 pkg="linux-image-$1-unsigned" dl="$WORK/dl" stage
    rm -rf "$dl" && mkdir -p "$dl"
    note "downloading $pkg"
    if ! (cd "$dl" && apt-get download -q "$pkg") >"$WORK/apt.log" 2>&1; then
        note "apt-get download $pkg failed:"
        sed 's/^/    /' "$WORK/apt.log" >&2
        return 1
    fi
    # Called in an `||` list, where set -e is off: every step checks itself.
    stage=$(mktemp -d "$CACHE/.stage.XXXXXX") || die "cannot create a directory in $CACHE"
    STAGE=$stage
    dpkg-deb -x "$dl"/*.deb "$stage/x" || die "dpkg-deb -x of $pkg failed"
    [ -f "$stage/x/boot/vmlinuz-$rel" ] || die "$pkg has no boot/vmlinuz-$rel"
    [ -d "$stage/x/lib/modules/$rel" ] || die "$pkg has no lib/modules/$rel"
    if ! { mkdir -p "$stage/$rel/lib/modules" &&
        mv "$stage/x/boot/vmlinuz-$rel" "$stage/$rel/vmlinuz" &&
        mv "$stage/x/lib/modules/$rel" "$stage/$rel/lib/modules/$rel"; }; then
        die "cannot move the kernel into $stage"
    fi
    if [ -f "$stage/x/boot/config-$rel" ]; then
        mv "$stage/x/boot/config-$rel" "$stage/$rel/config" || die "cannot move the config"
    fi
    depmod -b "$stage/$rel" "$rel" || die "depmod of $rel failed"
    touch "$stage/$rel/.ready" || die "cannot write $stage"
    rm -rf "${CACHE:?}/$rel"
    mv "$stage/$rel" "$CACHE/$rel" || die "cannot move $rel into $CACHE"
    rm -rf "$stage" "$dl"
    STAGE=
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one download/unpack at a time; released when this script exits

if [ -n "${QEMU_KERNEL:-}" ]; then
    RELEASE=$QEMU_KERNEL
    [ -e "$CACHE/$RELEASE/.ready" ] || fetch_release "$RELEASE" ||
        die "cannot download linux-image-$RELEASE-unsigned (see above; try apt-get update)"
else
    mapfile -t CANDIDATES < <(candidates)
    RELEASE=
    for rel in "${CANDIDATES[@]}"; do
        if [ -e "$CACHE/$rel/.ready" ] || fetch_release "$rel"; then
            RELEASE=$rel
            break
        fi
    done
    if [ -z "$RELEASE" ]; then
        RELEASE=$(cached_release)
        if [ -n "$RELEASE" ]; then
            note "warning: no linux-image-$SERIES cloud kernel downloadable; using cached $RELEASE"
        elif [ ${#CANDIDATES[@]} -eq 0 ]; then
            die "apt knows no linux-image-$SERIES*-cloud-amd64-unsigned package (run apt-get update; is bookworm(-security) in sources.list?)"
        else
            die "could not download any of: ${CANDIDATES[*]/#/linux-image-} (see above)"
        fi
    fi
fi
flock -u 9
KDIR=$CACHE/$RELEASE
note "kernel $RELEASE ($KDIR)"

# ---------------------------------------------------------------------------------------------
# Initramfs: busybox, the tools and binaries with their libraries, the modules, /init.
# ---------------------------------------------------------------------------------------------

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,run,etc,root,var,guest,lib/modules}
ln -s bin "$ROOT/sbin"
mkdir -p "$ROOT/usr"
ln -s ../bin "$ROOT/usr/bin"
ln -s ../bin "$ROOT/usr/sbin"
ln -s ../run "$ROOT/var/run"

# Copies the libraries (and the loader) a dynamic executable needs, at their host paths.
copy_libs() {
    local bin=$1 out lib
    out=$(ldd "$bin" 2>&1) || return 0 # static
    while read -r lib; do
        [ -e "$ROOT$lib" ] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done < <(printf '%s\n' "$out" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }')
    if printf '%s\n' "$out" | grep 'not found' >/dev/null; then
        die "$bin: missing libraries: $(printf '%s\n' "$out" | grep 'not found' | tr '\n' ' ')"
    fi
}

# Copies an executable to /bin/<name> with its libraries.
install_bin() {
    local src=$1 name=${2:-$(basename "$1")}
    cp -L "$src" "$ROOT/bin/$name"
    chmod 0755 "$ROOT/bin/$name"
    copy_libs "$src"
}

for b in "${EXTRA_BINARIES[@]}"; do
    install_bin "$b"
done
for t in "${TOOLS[@]}"; do
    [ -e "$ROOT/bin/$t" ] && continue
    path=$(command -v "$t") ||
        die "host tool '$t' not found (packages: iproute2 for ip/tc, bpftool, wireguard-tools for wg)"
    install_bin "$path" "$t"
done
# bash is the guest's sh: Debian's busybox ash runs its own applets in preference to PATH
# (FEATURE_SH_STANDALONE), which would replace iproute2's ip and tc with busybox's.
install_bin "$(command -v bash)" bash
ln -s bash "$ROOT/bin/sh"
cp "$(command -v busybox)" "$ROOT/bin/busybox"
for applet in $(busybox --list); do
    [ -e "$ROOT/bin/$applet" ] || [ -L "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done

# Modules: the requested ones and what they depend on, then a depmod of the copy.
MODSRC=$KDIR/lib/modules/$RELEASE
MODDST=$ROOT/lib/modules/$RELEASE
if [ "$MODULES" = all ]; then
    cp -a "$MODSRC" "$MODDST"
else
    mkdir -p "$MODDST"
    for f in modules.order modules.builtin modules.builtin.modinfo; do
        if [ -f "$MODSRC/$f" ]; then cp "$MODSRC/$f" "$MODDST/$f"; fi
    done
    for m in $MODULES; do
        deps=$(modprobe -d "$KDIR" -S "$RELEASE" --show-depends "$m" 2>&1) ||
            die "module '$m' not in $RELEASE: $deps"
        while read -r kind ko _; do
            [ "$kind" = insmod ] || continue
            rel_path=${ko#"$MODSRC"/}
            mkdir -p "$MODDST/$(dirname "$rel_path")"
            cp "$ko" "$MODDST/$rel_path"
        done <<<"$deps"
    done
fi
depmod -b "$ROOT" "$RELEASE"

# The guest script and the *.sh next to it (so scripts can source helpers such as lib.sh).
GUEST_DIR=$(cd "$(dirname "$GUEST_SCRIPT")" && pwd)
GUEST_NAME=$(basename "$GUEST_SCRIPT")
find "$GUEST_DIR" -maxdepth 1 -type f -name '*.sh' -exec cp {} "$ROOT/guest/" \;
cp "$GUEST_DIR/$GUEST_NAME" "$ROOT/guest/$GUEST_NAME"

: >"$ROOT/etc/guest.env"
for v in ${QEMU_PASS_ENV:-}; do
    [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "QEMU_PASS_ENV: bad name '$v'"
    if [ -n "${!v+x}" ]; then
        printf 'export %s=%q\n' "$v" "${!v}" >>"$ROOT/etc/guest.env"
    fi
done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"

cat >"$ROOT/init" <<EOF
#!/bin/sh
# Generated by tests/qemu/run.sh.
export PATH=/bin HOME=/root
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
# Only emergencies on the console, so the test's output is not interleaved with the kernel's.
dmesg -n 1
hostname qemu-guest
ip link set lo up
. /etc/guest.env
echo "QEMU-GUEST-START kernel=\$(uname -r)"
cd /guest
bash /guest/$GUEST_NAME
rc=\$?
echo "QEMU-GUEST-EXIT=\$rc"
sync
poweroff -f
EOF
chmod 0755 "$ROOT/init"

INITRD=$WORK/initrd.gz
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -1 >"$INITRD"
[ -z "${QEMU_KEEP_INITRD:-}" ] || cp "$INITRD" "$QEMU_KEEP_INITRD"
note "initramfs $(du -h "$INITRD" | cut -f1) ($(find "$ROOT/lib/modules" -name '*.ko*' | wc -l) modules)"

# ---------------------------------------------------------------------------------------------
# Boot.
# ---------------------------------------------------------------------------------------------

kvm_usable() { [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; }

# Whether KVM was seen not to boot on this host kernel (nested KVM can be broken: the guest
# hangs before its first line, or QEMU aborts setting an MSR). Then auto uses TCG directly.
KVM_STAMP=$CACHE/kvm-broken.$(uname -r)

BIOS_ARGS=()
for d in /usr/share/qemu /usr/share/seabios; do
    if [ -f "$d/qboot.rom" ]; then
        BIOS_ARGS=(-bios qboot.rom) # minimal and silent; SeaBIOS clears the screen
        break
    fi
done

# Starts the VM in the background with the given accelerator: sets QPID, TAILPID and RAW.
boot() {
    local accel=$1 cpu=$CPU
    if [ -z "$cpu" ]; then
        if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
    fi
    RAW=$WORK/console.$accel.raw
    : >"$RAW"
    note "booting ($accel, -cpu $cpu, ${MEM}M, $SMP cpu, timeout ${TIMEOUT}s)"
    timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
        -accel "$accel" -cpu "$cpu" -m "$MEM" -smp "$SMP" \
        -nographic -no-reboot -nodefaults -serial stdio "${BIOS_ARGS[@]}" \
        -kernel "$KDIR/vmlinuz" -initrd "$INITRD" \
        -append "console=ttyS0 quiet panic=-1 ${QEMU_APPEND:-}" \
        </dev/null >"$RAW" 2>&1 &
    QPID=$!
    tail -s 0.1 -n +1 -f --pid="$QPID" "$RAW" | sed -u 's/\r$//' &
    TAILPID=$!
}

# Waits for the VM; QRC is its exit status.
finish() {
    set +e
    wait "$QPID" 2>/dev/null # (bash's "Aborted" job notice; QEMU's own message is in RAW)
    QRC=$?
    set -e
    QPID=''
    wait "$TAILPID" || true
    TAILPID=''
}

case $ACCEL in
auto)
    if kvm_usable && [ ! -e "$KVM_STAMP" ]; then
        boot kvm
        # A working KVM reaches /init in a few seconds; give it KVM_PROBE before falling back.
        started=''
        for _ in $(seq $((${QEMU_KVM_PROBE:-20} * 5))); do
            if grep -a 'QEMU-GUEST-START' "$RAW" >/dev/null; then
                started=1
                break
            fi
            kill -0 "$QPID" 2>/dev/null || break
            sleep 0.2
        done
        if [ -n "$started" ]; then
            finish
        else
            kill "$QPID" 2>/dev/null || true
            finish
            if [ "$QRC" -eq 143 ] || [ "$QRC" -eq 124 ]; then
                echo "KVM guest did not reach /init within ${QEMU_KVM_PROBE:-20}s" >"$KVM_STAMP"
            else
                echo "qemu -accel kvm exited with $QRC before /init: $(grep -a -m1 -i error "$RAW")" >"$KVM_STAMP"
            fi
            note "KVM does not boot on this host; falling back to TCG (remembered in $KVM_STAMP)"
            boot tcg
            finish
        fi
    else
        boot tcg
        finish
    fi
    ;;
kvm | tcg)
    boot "$ACCEL"
    finish
    ;;
*) die "QEMU_ACCEL must be auto, kvm or tcg (got '$ACCEL')" ;;
esac

tr -d '\r' <"$RAW" >"$WORK/console.log"
[ -z "${QEMU_LOG:-}" ] || cp "$WORK/console.log" "$QEMU_LOG"

MARK=$(grep -ao 'QEMU-GUEST-EXIT=[0-9]*' "$WORK/console.log" | tail -n 1 || true)
if [ -z "$MARK" ]; then
    if [ "$QRC" -eq 124 ] || [ "$QRC" -eq 137 ]; then
        note "FAILED: the VM did not finish within ${TIMEOUT}s (QEMU_TIMEOUT); no QEMU-GUEST-EXIT marker"
    elif grep -aq 'Kernel panic' "$WORK/console.log"; then
        note "FAILED: guest kernel panicked; no QEMU-GUEST-EXIT marker"
    else
        note "FAILED: no QEMU-GUEST-EXIT marker in the console (qemu exit status $QRC)"
    fi
    exit "$EXIT_NO_RESULT"
fi
RC=${MARK#QEMU-GUEST-EXIT=}
note "guest script exited with $RC"
exit "$RC"
