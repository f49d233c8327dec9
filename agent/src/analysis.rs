//! One analysis of a node: the observed dataplane summarised for an operator, and verified
//! against the datastore when there is one (else against what the node itself implies).

use serde::Serialize;

use crate::{
    desired::{
        Datastore,
        expected::{self, Expected, HostFacts},
    },
    diag::{self, Diag},
    observed::ObservedDataplane,
    verify::{self, Policy, Verification},
};

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub diag: Diag,
    /// `None` when there is no Calico dataplane to verify.
    pub verification: Option<Verification>,
    /// What an offline input was read as, and what could not be used.
    pub input_notes: Vec<String>,
    /// Kernel drops sampled while the analysis ran (live `diag` only).
    pub drops: Option<DropSample>,
    /// Why there is no drop sample, when one was asked for.
    pub drops_unavailable: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DropSample {
    pub seconds: u64,
    pub rows: Vec<crate::flows::report::DropRow>,
    pub tcp_retransmits: u64,
}

/// Counts the node's drops (per kernel drop reason) and TCP retransmissions for `seconds`,
/// with only the tracepoints attached: no interface is touched.
pub async fn sample_drops(seconds: u64) -> Result<DropSample, crate::flows::FlowsError> {
    let probe = crate::flows::Probe::load(crate::flows::ProbeOptions {
        flow_table_size: 1,
        drops: true,
    })?;
    if let Some(why) = probe.drops_unavailable.clone() {
        return Err(crate::flows::FlowsError::Tracepoint(why));
    }
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let names = crate::flows::btf::drop_reasons().ok();
    Ok(DropSample {
        seconds,
        rows: crate::flows::report::name_drops(&probe.drops()?, names.as_ref()),
        tcp_retransmits: probe.retransmits()?,
    })
}

/// The host facts Felix itself reads from the kernel (MTU detection).
pub fn host_facts(obs: &ObservedDataplane) -> HostFacts {
    HostFacts {
        links: obs
            .links
            .iter()
            .map(|l| (l.name.clone(), l.mtu, l.is_up()))
            .collect(),
    }
}

/// Computes the expected dataplane for the observed node, if a datastore is given.
pub fn expected_for(
    obs: &ObservedDataplane,
    ds: Option<&Datastore>,
) -> Result<Option<Expected>, expected::ExpectedError> {
    ds.map(|ds| expected::compute(ds, &obs.node_name, &host_facts(obs)))
        .transpose()
}

pub fn analyse(obs: &ObservedDataplane, expected: Option<&Expected>, policy: &Policy) -> Analysis {
    let d = diag::build(obs);
    // With a datastore, a node without any Calico state is exactly what must be reported.
    let verification =
        (d.calico_found || expected.is_some()).then(|| verify::verify(expected, obs, policy));
    Analysis {
        diag: d,
        verification,
        input_notes: Vec::new(),
        drops: None,
        drops_unavailable: None,
    }
}
