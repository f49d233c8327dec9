//! The identity slip in `agent run`: a dataplane that holds another Node's addresses than the
//! agent's node name makes every check judge someone else's expected state. One-shot runs name
//! the slip first and call the verdict unverifiable; the daemon, whose findings become metrics,
//! Events and the Node condition, publishes the one cause instead of the storm.

use super::{CheckId, Finding, Severity, Verification};
use crate::desired::identity::IdentityMismatch;

/// Replaces `v`'s findings, judged against the named node's expected state, with the slip.
pub fn withhold_for(v: &mut Verification, m: &IdentityMismatch) {
    let withheld = v.findings.len();
    v.skipped
        .retain(|s| s.check != CheckId::NodeIdentityMismatch);
    v.findings = vec![
        Finding::new(
            CheckId::NodeIdentityMismatch,
            Severity::Critical,
            m.named.clone(),
        )
        .expected(format!("the dataplane of Node {}", m.named))
        .actual(format!(
            "Node {}'s: {}",
            m.looks_like,
            m.evidence.join(", ")
        ))
        .hint(format!(
            "the agent's node name (--node-name, NODENAME) is not this node's as Felix \
                 names it, so every check would judge {named}'s expected state here: \
                 {withheld} such finding(s) withheld. Give the agent Felix's node name: compare \
                 the DaemonSet's NODENAME with calico-node's, and `calicoctl get nodes`",
            named = m.named
        )),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testutil::{healthy, ids, route_mut, run};

    #[test]
    fn the_slip_replaces_the_findings_it_would_cause() {
        let (e, mut o) = healthy();
        route_mut(&mut o, "10.244.1.0/26").dev = Some("eth0".into());
        let mut v = run(&e, &o);
        assert!(!v.findings.is_empty());
        assert!(
            v.skipped
                .iter()
                .any(|s| s.check == CheckId::NodeIdentityMismatch)
        );
        let m = IdentityMismatch {
            named: "node-b".into(),
            looks_like: "node-a".into(),
            evidence: vec!["vxlan.calico MAC 66:07:02:c1:cc:60".into()],
        };
        withhold_for(&mut v, &m);
        assert_eq!(ids(&v), [(CheckId::NodeIdentityMismatch, "node-b".into())]);
        assert!(
            v.findings[0].actual.contains("node-a"),
            "{:?}",
            v.findings[0]
        );
        assert!(v.findings[0].hint.contains("1 such finding(s) withheld"));
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.check == CheckId::NodeIdentityMismatch)
        );
    }
}
