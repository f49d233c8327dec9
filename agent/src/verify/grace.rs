//! The grace window: a finding is reported only once it has persisted for `grace`, so that the
//! moments while Felix itself reprograms (pod churn, resyncs) are never reported as drift.

use std::{collections::HashMap, time::Duration};

use super::{CheckId, Verification};

#[derive(Debug, Default)]
pub struct GraceTracker {
    first_seen: HashMap<(CheckId, String), u64>,
}

impl GraceTracker {
    /// Feeds one verification run made at `now` (seconds); returns it with only the findings
    /// that have been present on every run for at least `grace`, stamped with when they
    /// first appeared. Findings that disappeared are forgotten.
    pub fn confirm(&mut self, mut v: Verification, now: u64, grace: Duration) -> Verification {
        let mut seen = HashMap::new();
        for f in &v.findings {
            let first = self.first_seen.get(&f.key()).copied().unwrap_or(now);
            seen.insert(f.key(), first);
        }
        self.first_seen = seen;
        v.findings.retain_mut(|f| {
            let first = self.first_seen.get(&f.key()).copied().unwrap_or(now);
            f.since = first;
            now.saturating_sub(first) >= grace.as_secs()
        });
        v
    }

    /// Findings waiting for their grace window to pass.
    pub fn pending(&self) -> usize {
        self.first_seen.len()
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
        assert!(g.confirm(run(&["a", "b"]), 1000, grace).findings.is_empty());
        assert_eq!(g.pending(), 2);
        // "b" healed (Felix's resync): forgotten. "a" persists past the window.
        let v = g.confirm(run(&["a"]), 1090, grace);
        assert_eq!(v.findings.len(), 1);
        assert_eq!(
            (v.findings[0].subject.as_str(), v.findings[0].since),
            ("a", 1000)
        );
        // "b" comes back: its window starts again.
        assert_eq!(g.confirm(run(&["a", "b"]), 1100, grace).findings.len(), 1);
    }

    #[test]
    fn zero_grace_reports_at_once() {
        let mut g = GraceTracker::default();
        assert_eq!(g.confirm(run(&["a"]), 5, Duration::ZERO).findings.len(), 1);
    }
}
