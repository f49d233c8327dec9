//! Loading the agent's own observe-only eBPF programs and reading their maps.
//!
//! TC programs attach through TCX at the head of the chain on kernels that have it (≥ 6.6), so
//! they see every packet before Felix's own programs; they return `TC_ACT_UNSPEC`, which hands
//! the packet on unchanged. On older kernels they attach as clsact filters. The drop counter is
//! a `kfree_skb` raw tracepoint (no tracefs needed). Everything attached is owned by [`Probe`] and detached when it
//! is dropped (also on SIGTERM, which ends the command that owns it): nothing outlives the agent.

pub mod btf;
pub mod reasons;
pub mod report;
pub mod targets;
pub mod watch;

pub use self::targets::{IfaceClass, Target};

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use agent_common::{
    CLOCK_MAP, DROP_REASONS_MAX, DROPS_MAP, FLOWS_DEFAULT_MAX, FLOWS_MAP, FlowKey, FlowValue,
    IFACE_CONFIG_MAP, IFACE_CONFIG_SLOTS, IFACE_SLOTS, IFACE_STATE_MAP, IfaceConfig, IfaceCounters,
    IfaceState, KERNEL_OFFSETS_GLOBAL, KernelOffsets, PROG_CLOCK, PROG_KFREE_SKB, PROG_TC_EGRESS,
    PROG_TC_INGRESS, PROG_TC_NOOP, PROG_TCP_RETRANSMIT, RETRANSMITS_MAP, direction,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use serde::Serialize;

/// The eBPF object built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("could not load the eBPF object (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name} rejected by the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not attach to {iface} ({direction}); needs CAP_NET_ADMIN")]
    Attach {
        iface: String,
        direction: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not read or write eBPF map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("kfree_skb raw tracepoint unavailable: {0}")]
    Tracepoint(String),
    #[error("could not read the network namespace of the calling thread")]
    Netns(#[source] std::io::Error),
    #[error("could not count the possible CPUs (/sys/devices/system/cpu/possible)")]
    Cpus(#[source] std::io::Error),
    #[error("all {IFACE_SLOTS} interface counter slots are in use")]
    SlotsFull,
    #[error("interface index {ifindex} shares its configuration slot with interface {other}")]
    SlotCollision { ifindex: u32, other: u32 },
}

/// Summed counters of one interface and direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub df_oversize: u64,
    pub icmp_frag_needed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    /// The value the eBPF programs use ([`agent_common::direction`]).
    fn raw(self) -> u32 {
        match self {
            Self::Ingress => direction::INGRESS,
            Self::Egress => direction::EGRESS,
        }
    }
}

/// One flow, merged over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Ports (TCP/UDP) or type and code (ICMP).
    pub sport: u16,
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
    /// Monotonic nanoseconds (`bpf_ktime_get_coarse_ns`, tick resolution) of the first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    pub ifindex: u32,
    pub tcp_flags: u8,
    pub df_oversize: bool,
    /// Packets of this flow the kernel dropped while they were on this interface.
    pub drops: u64,
    /// The `enum skb_drop_reason` value of the last of those drops.
    pub last_drop_reason: Option<u32>,
}

/// One of the object's programs, typed.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, FlowsError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(FlowsError::MissingProgram(name))?
        .try_into()
        .map_err(|source| FlowsError::Program { name, source })
}

/// Converts jiffies to monotonic nanoseconds from two simultaneous samples of both clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct JiffiesClock {
    jiffies: u64,
    ns: u64,
    ns_per_jiffy: u64,
}

impl JiffiesClock {
    /// The kernel's tick rates (CONFIG_HZ); the measured rate is rounded to the nearest.
    const HZ: [u64; 4] = [100, 250, 300, 1000];

    fn new((j0, n0): (u64, u64), (j1, n1): (u64, u64)) -> Self {
        let measured = j1.wrapping_sub(j0) as f64 * 1e9 / n1.saturating_sub(n0).max(1) as f64;
        let hz = Self::HZ
            .iter()
            .copied()
            .min_by(|a, b| {
                (*a as f64 - measured)
                    .abs()
                    .total_cmp(&(*b as f64 - measured).abs())
            })
            .unwrap_or(250);
        Self {
            jiffies: j1,
            ns: n1,
            ns_per_jiffy: 1_000_000_000 / hz,
        }
    }

    /// Jiffies `j` in monotonic nanoseconds (0 stays 0: no packet).
    fn to_ns(self, j: u64) -> u64 {
        if j == 0 {
            return 0;
        }
        self.ns.saturating_sub(
            self.jiffies
                .wrapping_sub(j)
                .saturating_mul(self.ns_per_jiffy),
        )
    }
}

/// What is left of an interface that went away.
#[derive(Debug, Clone, Default)]
pub struct Retired {
    pub counts: Vec<(Direction, Counts)>,
    /// Flows that were still in its cache (the table keeps the others).
    pub flows: Vec<Flow>,
}

/// The programs' log-record reader, writing to the `log` facade (bridged into tracing).
pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Forwards the programs' log records to `log` (and so to tracing) as they arrive, until the
/// task is dropped. Records not read in time are lost by the kernel's ring buffer, never
/// block a program.
pub async fn drain_logs(logger: EbpfLogger) {
    // SAFETY: the AsyncFd owns the logger, and with it the ring buffer's fd, for its whole
    // life; the logger's fd never changes.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log records will not be read");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading eBPF log records");
                return;
            }
        }
    }
}

/// Options fixed at load time.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Flow table capacity (LRU: the least recently used flow is evicted when full).
    pub flow_table_size: u32,
    /// Also count drops with the `kfree_skb` raw tracepoint.
    pub drops: bool,
    /// Attach a program that does nothing instead of the counting ones: what any TC program
    /// costs on this node, the floor under ours (`cargo xtask bench` measures both).
    pub calibrate: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            flow_table_size: FLOWS_DEFAULT_MAX,
            drops: true,
            calibrate: false,
        }
    }
}

/// The agent's eBPF programs, loaded; every attachment lives exactly as long as it does.
pub struct Probe {
    ebpf: Ebpf,
    /// (jiffies, monotonic ns) sampled at load: with a later sample, the tick rate. `None`
    /// when the kernel would not run `dp_clock`: flow times are then 0 (unknown).
    clock_anchor: Option<(u64, u64)>,
    calibrate: bool,
    /// Counter slot of each registered interface, by ifindex.
    slots: BTreeMap<u32, u16>,
    /// Why drop counting is off, if it is.
    pub drops_unavailable: Option<String>,
    /// Why drops are not attributed to interfaces and flows, if they are not.
    pub drops_unattributed: Option<String>,
    /// The programs' rare-event log records, until someone takes it to drain them.
    logger: Option<EbpfLogger>,
}

impl Probe {
    /// Loads and verifies the programs and starts counting drops; attaches to no interface.
    pub fn load(opts: ProbeOptions) -> Result<Self, FlowsError> {
        // Without BTF the tracepoint cannot find the packet's device: drops are then counted
        // per reason only.
        let (offsets, drops_unattributed) = match btf::kernel_offsets() {
            Ok(o) => (o, None),
            Err(e) => (KernelOffsets::default(), Some(e.to_string())),
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, opts.flow_table_size.max(1))
            .override_global(KERNEL_OFFSETS_GLOBAL, &offsets, true)
            .load(OBJECT)
            .map_err(FlowsError::Load)?;
        // The programs log only rare events (a failed flow-table insert, a malformed IPv4
        // header), rate-limited in the kernel; without the logger they are simply not seen.
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|e| tracing::warn!(error = %e, "eBPF log records will not be read"))
            .ok();
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_TC_NOOP, PROG_CLOCK] {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| FlowsError::Program { name, source })?;
        }
        let mut probe = Self {
            ebpf,
            clock_anchor: None,
            calibrate: opts.calibrate,
            slots: BTreeMap::new(),
            drops_unavailable: None,
            drops_unattributed,
            logger,
        };
        probe.clock_anchor = probe.clock_sample().ok();
        if opts.drops
            && let Err(e) = probe.attach_drops()
        {
            probe.drops_unavailable = Some(e.to_string());
        }
        Ok(probe)
    }

    fn attach_drops(&mut self) -> Result<(), FlowsError> {
        // kfree_skb fails cleanly on kernels whose tracepoint has no reason argument (< 5.17).
        for (name, tracepoint) in [
            (PROG_KFREE_SKB, "kfree_skb"),
            (PROG_TCP_RETRANSMIT, "tcp_retransmit_skb"),
        ] {
            let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
            prog.load()
                .map_err(|source| FlowsError::Program { name, source })?;
            prog.attach(tracepoint)
                .map_err(|e| FlowsError::Tracepoint(crate::observed::error_chain(&e)))?;
        }
        Ok(())
    }

    /// Makes `target` known to the programs (its MTU, class and a counter slot, zeroed) without
    /// attaching to it: drops on it are then attributed to its class.
    pub fn register(&mut self, target: &Target) -> Result<(), FlowsError> {
        if self.slots.contains_key(&target.ifindex) {
            return Ok(());
        }
        let used: std::collections::BTreeSet<u16> = self.slots.values().copied().collect();
        let slot = (0..IFACE_SLOTS as u16)
            .find(|s| !used.contains(s))
            .ok_or(FlowsError::SlotsFull)?;
        let index = target.ifindex % IFACE_CONFIG_SLOTS;
        let cfg: Array<_, IfaceConfig> = self.map(IFACE_CONFIG_MAP)?;
        let current = cfg
            .get(&index, 0)
            .map_err(|e| FlowsError::Map(IFACE_CONFIG_MAP, e))?;
        if current.ifindex != 0 && current.ifindex != target.ifindex {
            return Err(FlowsError::SlotCollision {
                ifindex: target.ifindex,
                other: current.ifindex,
            });
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| FlowsError::Cpus(e))?;
        let mut state: PerCpuArray<_, IfaceState> = self.map_mut(IFACE_STATE_MAP)?;
        for dir in Direction::BOTH {
            let zeroes = PerCpuValues::try_from(vec![IfaceState::default(); cpus])
                .map_err(FlowsError::Cpus)?;
            state
                .set(u32::from(slot) * 2 + dir.raw(), zeroes, 0)
                .map_err(|e| FlowsError::Map(IFACE_STATE_MAP, e))?;
        }
        let mut cfg: Array<_, IfaceConfig> = self.map_mut(IFACE_CONFIG_MAP)?;
        cfg.set(
            index,
            IfaceConfig {
                ifindex: target.ifindex,
                netns: current_netns()?,
                mtu: target.mtu,
                counter_slot: slot,
                class: target.class.raw(),
                l3: u8::from(target.l3),
            },
            0,
        )
        .map_err(|e| FlowsError::Map(IFACE_CONFIG_MAP, e))?;
        self.slots.insert(target.ifindex, slot);
        Ok(())
    }

    /// Forgets an interface that is gone, returning its final counters and the flows only its
    /// cache held; its slots are free for the next interface.
    pub fn release(&mut self, ifindex: u32) -> Result<Retired, FlowsError> {
        let counts = self.iface_counts(ifindex)?;
        let mut cached = HashMap::new();
        if let Some(&slot) = self.slots.get(&ifindex) {
            self.collect_cache(u32::from(slot), &mut cached)?;
        }
        let flows = self.merge(&cached);
        if self.slots.remove(&ifindex).is_some() {
            let mut cfg: Array<_, IfaceConfig> = self.map_mut(IFACE_CONFIG_MAP)?;
            cfg.set(ifindex % IFACE_CONFIG_SLOTS, IfaceConfig::default(), 0)
                .map_err(|e| FlowsError::Map(IFACE_CONFIG_MAP, e))?;
        }
        Ok(Retired { counts, flows })
    }

    /// Attaches both directions to `target` (in the calling thread's network namespace).
    pub fn attach(&mut self, target: &Target) -> Result<(), FlowsError> {
        let iface = target.name.as_str();
        self.register(target)?;
        let tcx = AttachMode::current() == AttachMode::Tcx;
        if !tcx {
            // Pre-TCX kernels need the clsact qdisc; it may already exist (Felix's own, in
            // Calico eBPF mode), which is fine.
            let _ = tc::qdisc_add_clsact(iface);
        }
        let (ingress, egress) = if self.calibrate {
            (PROG_TC_NOOP, PROG_TC_NOOP)
        } else {
            (PROG_TC_INGRESS, PROG_TC_EGRESS)
        };
        for (name, attach_type, dir) in [
            (ingress, TcAttachType::Ingress, "ingress"),
            (egress, TcAttachType::Egress, "egress"),
        ] {
            let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
            let options = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::first())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            prog.attach_with_options(iface, attach_type, options)
                .map_err(|source| FlowsError::Attach {
                    iface: iface.to_string(),
                    direction: dir,
                    source,
                })?;
        }
        Ok(())
    }

    /// One of the object's maps, typed.
    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, FlowsError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        T::try_from(self.ebpf.map(name).ok_or(FlowsError::MissingMap(name))?)
            .map_err(|e| FlowsError::Map(name, e))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, FlowsError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        T::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or(FlowsError::MissingMap(name))?,
        )
        .map_err(|e| FlowsError::Map(name, e))
    }

    /// Average run time of TC program `name` over `repeat` runs on `packet` as if it were on
    /// interface `ifindex`, measured by the kernel with `BPF_PROG_TEST_RUN` (nothing is
    /// attached). The benchmark compares programs with it.
    pub fn time_tc(
        &self,
        name: &'static str,
        packet: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<std::time::Duration, FlowsError> {
        // `struct __sk_buff` (UAPI): 192 bytes, `ifindex` at byte 40; every other field zero.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(FlowsError::MissingProgram(name))?
            .try_into()
            .map_err(|source| FlowsError::Program { name, source })?;
        let mut opts = aya::TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        aya::TestRun::test_run(prog, opts)
            .map(|r| r.duration)
            .map_err(|source| FlowsError::Program { name, source })
    }

    /// (jiffies, monotonic ns) read together in the kernel by `dp_clock`.
    fn clock_sample(&self) -> Result<(u64, u64), FlowsError> {
        // The smallest packet a TC test run accepts: an Ethernet header.
        self.time_tc(PROG_CLOCK, &[0u8; 14], 1, 1)?;
        let clock: Array<_, u64> = self.map(CLOCK_MAP)?;
        let read = |i| clock.get(&i, 0).map_err(|e| FlowsError::Map(CLOCK_MAP, e));
        Ok((read(0)?, read(1)?))
    }

    /// The conversion from flow times (jiffies) to monotonic nanoseconds, with the tick rate
    /// measured since load (waiting for a quarter second to pass if it has not).
    fn jiffies_clock(&self) -> Option<JiffiesClock> {
        let (j0, n0) = self.clock_anchor?;
        let mut now = self.clock_sample().ok()?;
        let min = 250_000_000;
        if now.1.saturating_sub(n0) < min {
            std::thread::sleep(std::time::Duration::from_nanos(
                min - now.1.saturating_sub(n0),
            ));
            now = self.clock_sample().ok()?;
        }
        Some(JiffiesClock::new((j0, n0), now))
    }

    /// The log-record reader, for [`drain_logs`]; `None` once taken or when it could not start.
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }

    /// Kernel time spent in our programs so far (0 unless `kernel.bpf_stats_enabled=1`).
    pub fn run_time_ns(&self) -> u64 {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|i| u64::try_from(i.run_time().as_nanos()).unwrap_or(u64::MAX))
            .sum()
    }

    /// Kernel ids of the loaded programs (to check from outside that they are gone).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|i| i.id())
            .collect()
    }

    /// Counters per (ifindex, direction) of every registered interface, summed over all CPUs.
    pub fn counts(&self) -> Result<BTreeMap<(u32, Direction), Counts>, FlowsError> {
        let mut out = BTreeMap::new();
        for &ifindex in self.slots.keys() {
            for (dir, c) in self.iface_counts(ifindex)? {
                out.insert((ifindex, dir), c);
            }
        }
        Ok(out)
    }

    fn iface_counts(&self, ifindex: u32) -> Result<Vec<(Direction, Counts)>, FlowsError> {
        Direction::BOTH
            .iter()
            .map(|&dir| Ok((dir, sum_counters(self.counts_per_cpu(ifindex, dir)?.iter()))))
            .collect()
    }

    /// One interface's counters as each CPU holds them (empty if it is not registered).
    pub fn counts_per_cpu(
        &self,
        ifindex: u32,
        dir: Direction,
    ) -> Result<Vec<IfaceCounters>, FlowsError> {
        let Some(&slot) = self.slots.get(&ifindex) else {
            return Ok(Vec::new());
        };
        let map: PerCpuArray<_, IfaceState> = self.map(IFACE_STATE_MAP)?;
        let values = map
            .get(&(u32::from(slot) * 2 + dir.raw()), 0)
            .map_err(|e| FlowsError::Map(IFACE_STATE_MAP, e))?;
        Ok(values.iter().map(|s| s.counters).collect())
    }

    /// Every flow, merged over CPUs and over the table and the per-interface caches. Read
    /// while traffic flows, a flow moving from a cache into the table between the two reads
    /// may be counted twice or not at all for that packet; once traffic stops, the counts
    /// are exact.
    pub fn flows(&self) -> Result<Vec<Flow>, FlowsError> {
        let mut all: HashMap<FlowKey, Vec<FlowValue>> = HashMap::new();
        for &slot in self.slots.values() {
            self.collect_cache(u32::from(slot), &mut all)?;
        }
        let map: PerCpuHashMap<_, FlowKey, FlowValue> = self.map(FLOWS_MAP)?;
        for entry in map.iter() {
            let (k, per_cpu) = entry.map_err(|e| FlowsError::Map(FLOWS_MAP, e))?;
            all.entry(k).or_default().extend(per_cpu.iter().copied());
        }
        Ok(self.merge(&all))
    }

    /// One [`Flow`] per key, its times in monotonic nanoseconds.
    fn merge(&self, all: &HashMap<FlowKey, Vec<FlowValue>>) -> Vec<Flow> {
        if all.is_empty() {
            return Vec::new();
        }
        let clock = self.jiffies_clock();
        all.iter()
            .map(|(k, v)| {
                let mut f = merge_flow_values(k, v.iter());
                let to_ns = |j| clock.map_or(0, |c| c.to_ns(j));
                f.first_ns = to_ns(f.first_ns);
                f.last_ns = to_ns(f.last_ns);
                f
            })
            .collect()
    }

    /// The flows each CPU's cache holds for counter slot `slot` (both directions).
    fn collect_cache(
        &self,
        slot: u32,
        into: &mut HashMap<FlowKey, Vec<FlowValue>>,
    ) -> Result<(), FlowsError> {
        let state: PerCpuArray<_, IfaceState> = self.map(IFACE_STATE_MAP)?;
        for dir in Direction::BOTH {
            let per_cpu = state
                .get(&(slot * 2 + dir.raw()), 0)
                .map_err(|e| FlowsError::Map(IFACE_STATE_MAP, e))?;
            for e in per_cpu.iter().map(|s| &s.flow) {
                if e.value.packets > 0 || e.value.drops > 0 {
                    into.entry(e.key).or_default().push(e.value);
                }
            }
        }
        Ok(())
    }

    /// TCP retransmissions on the whole node since the probe was loaded.
    pub fn retransmits(&self) -> Result<u64, FlowsError> {
        let map: PerCpuArray<_, u64> = self.map(RETRANSMITS_MAP)?;
        Ok(map
            .get(&0, 0)
            .map_err(|e| FlowsError::Map(RETRANSMITS_MAP, e))?
            .iter()
            .sum())
    }

    /// Drop counts per (class of the packet's device, `enum skb_drop_reason` value), summed
    /// over CPUs (non-zero only).
    pub fn drops(&self) -> Result<BTreeMap<(IfaceClass, u32), u64>, FlowsError> {
        let map: PerCpuArray<_, u64> = self.map(DROPS_MAP)?;
        let mut out = BTreeMap::new();
        for (index, values) in (0u32..).zip(map.iter()) {
            let values = values.map_err(|e| FlowsError::Map(DROPS_MAP, e))?;
            let n: u64 = values.iter().sum();
            if n > 0 {
                let class = IfaceClass::from_raw((index / DROP_REASONS_MAX) as u8);
                out.insert((class, index % DROP_REASONS_MAX), n);
            }
        }
        Ok(out)
    }
}

/// Inode number of the calling thread's network namespace (threads may be in different ones).
fn current_netns() -> Result<u32, FlowsError> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(FlowsError::Netns)?
        .ino();
    // Namespace inodes are 32-bit (proc_inum).
    Ok(u32::try_from(ino).unwrap_or(u32::MAX))
}

/// Sums one key's per-CPU slots.
pub fn sum_counters<'a>(values: impl Iterator<Item = &'a IfaceCounters>) -> Counts {
    values.fold(Counts::default(), |acc, v| Counts {
        packets: acc.packets.wrapping_add(v.packets),
        bytes: acc.bytes.wrapping_add(v.bytes),
        df_oversize: acc.df_oversize.wrapping_add(v.df_oversize),
        icmp_frag_needed: acc.icmp_frag_needed.wrapping_add(v.icmp_frag_needed),
    })
}

/// Adds `f` to the flow with the same key in `flows`, or appends it.
fn add_flow(flows: &mut Vec<Flow>, f: &Flow) {
    let same = |g: &&mut Flow| {
        (g.proto, g.src, g.dst, g.sport, g.dport, g.ifindex)
            == (f.proto, f.src, f.dst, f.sport, f.dport, f.ifindex)
    };
    match flows.iter_mut().find(same) {
        Some(g) => {
            g.packets += f.packets;
            g.bytes += f.bytes;
            g.first_ns = g.first_ns.min(f.first_ns);
            g.last_ns = g.last_ns.max(f.last_ns);
            g.tcp_flags |= f.tcp_flags;
            g.df_oversize |= f.df_oversize;
            g.drops += f.drops;
            g.last_drop_reason = f.last_drop_reason.or(g.last_drop_reason);
        }
        None => flows.push(f.clone()),
    }
}

/// Merges a flow's per-CPU (and cached) values: counts add up, first/last seen are the
/// min/max over the values that saw packets, flags are OR'd.
fn merge_flow_values<'a>(k: &FlowKey, values: impl Iterator<Item = &'a FlowValue>) -> Flow {
    let mut f = Flow {
        proto: k.proto,
        src: Ipv4Addr::from(u32::from_be(k.src)),
        dst: Ipv4Addr::from(u32::from_be(k.dst)),
        sport: if k.proto == 1 {
            k.sport
        } else {
            u16::from_be(k.sport)
        },
        dport: if k.proto == 1 {
            k.dport
        } else {
            u16::from_be(k.dport)
        },
        packets: 0,
        bytes: 0,
        first_ns: 0,
        last_ns: 0,
        ifindex: k.ifindex,
        tcp_flags: 0,
        df_oversize: false,
        drops: 0,
        last_drop_reason: None,
    };
    // A CPU that only saw a drop of the flow holds drops but no packets.
    for v in values.filter(|v| v.packets > 0 || v.drops > 0) {
        f.drops += u64::from(v.drops);
        if v.drops > 0 {
            f.last_drop_reason = Some(u32::from(v.last_drop_reason));
        }
        if v.packets == 0 {
            continue;
        }
        f.packets += v.packets;
        f.bytes += v.bytes;
        // In jiffies here; [`Probe::flows`] converts them.
        f.first_ns = if f.first_ns == 0 {
            v.first_jiffies
        } else {
            f.first_ns.min(v.first_jiffies)
        };
        f.last_ns = f.last_ns.max(v.last_jiffies);
        f.tcp_flags |= v.tcp_flags;
        f.df_oversize |= v.flags & agent_common::flow_flags::DF_OVERSIZE != 0;
    }
    f
}

/// How the TC programs attach on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX links at the head of the chain (Linux ≥ 6.6).
    Tcx,
    /// Filters on a clsact qdisc (older kernels).
    Clsact,
}

impl AttachMode {
    pub fn current() -> Self {
        if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            Self::Tcx
        } else {
            Self::Clsact
        }
    }
}

/// A probe plus the interfaces it follows: new workload interfaces are attached as they appear
/// (each [`Session::refresh`]); vanished ones are released, their counts kept.
pub struct Session {
    pub probe: Probe,
    pub targets: Vec<Target>,
    /// Interfaces that went away, with what was left of them.
    pub retired: Vec<(Target, Retired)>,
    only: Option<String>,
    pub notes: Vec<String>,
    /// The kernel's drop reason names, read from BTF once.
    reason_names: Option<BTreeMap<u32, String>>,
}

impl Session {
    pub fn start(opts: ProbeOptions, only: Option<&str>) -> Result<Self, FlowsError> {
        let probe = Probe::load(opts)?;
        let mut notes = Vec::new();
        if let Some(why) = &probe.drops_unavailable {
            notes.push(format!("drops unavailable: {why}"));
        } else if let Some(why) = &probe.drops_unattributed {
            notes.push(format!(
                "drops not attributed to interfaces or flows: {why}"
            ));
        }
        let reason_names = btf::drop_reasons().ok();
        if reason_names.is_none() {
            notes.push(
                "drop reason names unavailable (no /sys/kernel/btf/vmlinux): codes shown".into(),
            );
        }
        Ok(Self {
            probe,
            targets: Vec::new(),
            retired: Vec::new(),
            only: only.map(str::to_string),
            notes,
            reason_names,
        })
    }

    /// Attaches to the Calico interfaces present now that are not attached yet, and releases
    /// the ones that are gone.
    pub fn refresh(&mut self, obs: &crate::observed::ObservedDataplane) {
        let (live, gone): (Vec<Target>, Vec<Target>) = std::mem::take(&mut self.targets)
            .into_iter()
            .partition(|t| {
                obs.links
                    .iter()
                    .any(|l| l.index == t.ifindex && l.name == t.name)
            });
        self.targets = live;
        for t in gone {
            match self.probe.release(t.ifindex) {
                Ok(r) => self.retired.push((t, r)),
                Err(e) => self.notes.push(format!(
                    "counts of {} lost when it went away: {}",
                    t.name,
                    crate::observed::error_chain(&e)
                )),
            }
        }
        for t in targets::select(obs, self.only.as_deref()) {
            if self.targets.iter().any(|a| a.ifindex == t.ifindex) {
                continue;
            }
            match self.probe.attach(&t) {
                Ok(()) => self.targets.push(t),
                Err(e) => self.notes.push(format!(
                    "not attached to {}: {}",
                    t.name,
                    crate::observed::error_chain(&e)
                )),
            }
        }
    }

    /// Drops so far per kernel reason, named.
    pub fn drop_rows(&self) -> Result<Vec<report::DropRow>, FlowsError> {
        Ok(report::name_drops(
            &self.probe.drops()?,
            self.reason_names.as_ref(),
        ))
    }

    pub fn report(
        &self,
        node: &str,
        window_seconds: u64,
        top: usize,
    ) -> Result<report::FlowsReport, FlowsError> {
        let names = self.reason_names.as_ref();
        let drops = report::name_drops(&self.probe.drops()?, names);
        let notes = self.notes.clone();
        let mut counts = self.probe.counts()?;
        let mut flows = self.probe.flows()?;
        let mut targets = self.targets.clone();
        for (t, retired) in &self.retired {
            for (dir, c) in &retired.counts {
                counts.insert((t.ifindex, *dir), *c);
            }
            for f in &retired.flows {
                add_flow(&mut flows, f);
            }
            targets.push(t.clone());
        }
        let mut r = report::build(
            node,
            window_seconds,
            &targets,
            &counts,
            flows,
            top,
            drops,
            names,
            notes,
        );
        r.tcp_retransmits = self.probe.retransmits()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_cpu_slot() {
        let slots = [
            IfaceCounters {
                packets: 3,
                bytes: 300,
                df_oversize: 1,
                icmp_frag_needed: 0,
            },
            IfaceCounters::default(),
            IfaceCounters {
                packets: 7,
                bytes: 700,
                df_oversize: 0,
                icmp_frag_needed: 2,
            },
        ];
        assert_eq!(
            sum_counters(slots.iter()),
            Counts {
                packets: 10,
                bytes: 1000,
                df_oversize: 1,
                icmp_frag_needed: 2
            }
        );
    }

    #[test]
    fn jiffies_become_monotonic_nanoseconds() {
        // 1.2 s at HZ=250 is 300 jiffies; the noise of a tick either way still rounds to 250.
        for dj in [299, 300, 301] {
            let c = JiffiesClock::new((1_000, 5_000_000_000), (1_000 + dj, 6_200_000_000));
            assert_eq!(c.ns_per_jiffy, 4_000_000, "{dj}");
        }
        let c = JiffiesClock::new((1_000, 5_000_000_000), (1_300, 6_200_000_000));
        assert_eq!(c.to_ns(1_300), 6_200_000_000);
        assert_eq!(c.to_ns(1_050), 5_200_000_000);
        assert_eq!(c.to_ns(0), 0);
        // HZ=1000 over a quarter second.
        let c = JiffiesClock::new((0xffff_ff00, 0), (0xffff_ff00 + 251, 250_000_000));
        assert_eq!(c.ns_per_jiffy, 1_000_000);
    }

    #[test]
    fn merges_flows_across_cpus() {
        let key = FlowKey {
            src: u32::from(Ipv4Addr::new(10, 244, 0, 1)).to_be(),
            dst: u32::from(Ipv4Addr::new(10, 244, 1, 1)).to_be(),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            ifindex: 5,
            _pad: [0; 3],
        };
        let cpu0 = FlowValue {
            packets: 2,
            bytes: 200,
            first_jiffies: 50,
            last_jiffies: 90,
            tcp_flags: 0x02,
            flags: 0,
            drops: 0,
            last_drop_reason: 0,
        };
        let cpu1 = FlowValue {
            packets: 3,
            bytes: 300,
            first_jiffies: 40,
            last_jiffies: 120,
            tcp_flags: 0x10,
            flags: 1,
            drops: 1,
            last_drop_reason: 9,
        };
        // A third CPU saw only a drop.
        let cpu2 = FlowValue {
            drops: 2,
            last_drop_reason: 12,
            ..FlowValue::default()
        };
        let f = merge_flow_values(&key, [FlowValue::default(), cpu0, cpu1, cpu2].iter());
        assert_eq!(
            (f.packets, f.bytes, f.first_ns, f.last_ns, f.ifindex),
            (5, 500, 40, 120, 5)
        );
        assert_eq!((f.drops, f.last_drop_reason), (3, Some(12)));
        assert_eq!((f.tcp_flags, f.df_oversize), (0x12, true));
        assert_eq!(
            (f.src, f.dst, f.sport, f.dport),
            (
                Ipv4Addr::new(10, 244, 0, 1),
                Ipv4Addr::new(10, 244, 1, 1),
                40000,
                80
            )
        );
    }
}
