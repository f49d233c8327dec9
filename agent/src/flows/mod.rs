//! Loading the agent's own observe-only eBPF programs and reading their maps.
//!
//! Programs are attached through TCX at the head of the chain on kernels that have it (≥ 6.6),
//! so they see every packet before Felix's own programs; they return `TC_ACT_UNSPEC`, which hands
//! the packet on unchanged. On older kernels they attach as clsact filters. Every attachment is
//! owned by [`IfaceCounterProbe`] and detached when it is dropped: nothing outlives the agent.

use std::collections::BTreeMap;

use agent_common::{
    IFACE_COUNTERS_MAP, IfaceCounters, IfaceKey, PROG_TC_EGRESS, PROG_TC_INGRESS, direction,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuHashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};

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
    #[error("could not read eBPF map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// Summed counters of one interface and direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// The per-interface packet/byte counter programs, loaded and attached to chosen interfaces.
pub struct IfaceCounterProbe {
    ebpf: Ebpf,
    attached: Vec<String>,
}

impl IfaceCounterProbe {
    /// Loads and verifies the programs; attaches nothing yet.
    pub fn load() -> Result<Self, FlowsError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(FlowsError::Load)?;
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(FlowsError::MissingProgram(name))?
                .try_into()
                .map_err(|source| FlowsError::Program { name, source })?;
            prog.load()
                .map_err(|source| FlowsError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches both directions to `iface` (in the calling thread's network namespace).
    pub fn attach(&mut self, iface: &str) -> Result<(), FlowsError> {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            // Pre-TCX kernels need the clsact qdisc; it may already exist (Felix's own, in
            // Calico eBPF mode), which is fine.
            let _ = tc::qdisc_add_clsact(iface);
        }
        for (name, attach_type, dir) in [
            (PROG_TC_INGRESS, TcAttachType::Ingress, "ingress"),
            (PROG_TC_EGRESS, TcAttachType::Egress, "egress"),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(FlowsError::MissingProgram(name))?
                .try_into()
                .map_err(|source| FlowsError::Program { name, source })?;
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
        self.attached.push(iface.to_string());
        Ok(())
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Counters per (ifindex, direction), summed over all CPUs.
    pub fn counts(&self) -> Result<BTreeMap<(u32, Direction), Counts>, FlowsError> {
        let map: PerCpuHashMap<_, IfaceKey, IfaceCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map(IFACE_COUNTERS_MAP)
                .ok_or(FlowsError::MissingMap(IFACE_COUNTERS_MAP))?,
        )
        .map_err(|e| FlowsError::Map(IFACE_COUNTERS_MAP, e))?;
        let mut out = BTreeMap::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.map_err(|e| FlowsError::Map(IFACE_COUNTERS_MAP, e))?;
            let sum = sum_per_cpu(per_cpu.iter());
            out.insert((key.ifindex, Direction::from_raw(key.direction)), sum);
        }
        Ok(out)
    }
}

/// Sums one key's per-CPU slots.
pub fn sum_per_cpu<'a>(values: impl Iterator<Item = &'a IfaceCounters>) -> Counts {
    values.fold(Counts::default(), |acc, v| Counts {
        packets: acc.packets.wrapping_add(v.packets),
        bytes: acc.bytes.wrapping_add(v.bytes),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn from_raw(raw: u32) -> Self {
        if raw == direction::EGRESS {
            Self::Egress
        } else {
            Self::Ingress
        }
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
            },
            IfaceCounters {
                packets: 0,
                bytes: 0,
            },
            IfaceCounters {
                packets: 7,
                bytes: 700,
            },
        ];
        assert_eq!(
            sum_per_cpu(slots.iter()),
            Counts {
                packets: 10,
                bytes: 1000
            }
        );
    }
}
