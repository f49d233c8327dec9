//! The grace window: a finding is reported only once it has persisted for `grace`, so that the
//! moments while Felix itself reprograms (pod churn, resyncs) are never reported as drift.

use std::{collections::HashMap, time::Duration};

use super::{CheckId, Verification};

#[derive(Debug, Default)]
pub struct GraceTracker {
    /// When each finding was first seen, in ms since the epoch.
    first_seen: HashMap<(CheckId, String), u64>,
}

impl GraceTracker {
    /// Feeds one verification run made at `now_ms` (ms since the epoch); returns it with only
    /// the findings that have been present on every run for at least `grace`, stamped with
    /// when they first appeared. Findings that disappeared are forgotten.
    pub fn confirm(&mut self, mut v: Verification, now_ms: u64, grace: Duration) -> Verification {
        let mut seen = HashMap::new();
        for f in &v.findings {
            let first = self.first_seen.get(&f.key()).copied().unwrap_or(now_ms);
            seen.insert(f.key(), first);
        }
        self.first_seen = seen;
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        v.findings.retain_mut(|f| {
            let first = self.first_seen.get(&f.key()).copied().unwrap_or(now_ms);
            f.since = first / 1000;
            now_ms.saturating_sub(first) >= grace_ms
        });
        v
    }

    /// Findings seen so far, confirmed or still inside their window.
    pub fn pending(&self) -> usize {
        self.first_seen.len()
    }

    /// When (ms since the epoch) the next finding still inside its window becomes due, to
    /// verify again right then.
    pub fn next_due(&self, now_ms: u64, grace: Duration) -> Option<u64> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.first_seen
            .values()
            .map(|first| first.saturating_add(grace_ms))
            .filter(|due| *due > now_ms)
            .min()
    }

    /// When a finding was first seen (ms since the epoch).
    pub fn first_seen_ms(&self, key: &(CheckId, String)) -> Option<u64> {
        self.first_seen.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Finding, Severity};

    fn run(subjects: &[&str]) -> Verification {
        Verification {
            findings: subjects
                .iter()
                .map(|s| Finding::new(CheckId::RouteMissing, Severity::Critical, *s))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn holds_findings_until_they_persist() {
        let mut g = GraceTracker::default();
        let grace = Duration::from_secs(90);
        assert!(
            g.confirm(run(&["a", "b"]), 1_000_000, grace)
                .findings
                .is_empty()
        );
        assert_eq!(g.pending(), 2);
        assert_eq!(g.next_due(1_000_000, grace), Some(1_090_000));
        // Just inside the window: still held.
        assert!(g.confirm(run(&["a"]), 1_089_999, grace).findings.is_empty());
        // "b" healed (Felix's resync): forgotten. "a" persists past the window.
        let v = g.confirm(run(&["a"]), 1_090_000, grace);
        assert_eq!(v.findings.len(), 1);
        assert_eq!(
            (v.findings[0].subject.as_str(), v.findings[0].since),
            ("a", 1000)
        );
        assert_eq!(g.next_due(1_090_000, grace), None);
        // "b" comes back: its window starts again.
        assert_eq!(
            g.confirm(run(&["a", "b"]), 1_100_000, grace).findings.len(),
            1
        );
    }

    #[test]
    fn zero_grace_reports_at_once() {
        let mut g = GraceTracker::default();
        assert_eq!(g.confirm(run(&["a"]), 5, Duration::ZERO).findings.len(), 1);
    }
}
