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
    }
}
