//! The Helm chart, checked by the real tools: rendered by the Helm v4 engine for every `ci/`
//! values file, linted, validated against the Kubernetes 1.33 schemas, its security properties
//! and RBAC asserted, a bad values file rejected, and its alerts checked and unit-tested by
//! `promtool`, its arguments accepted by the agent binary (tests/deploy/chart_test.py does the
//! work; this runs it in the test command).

use std::process::Command;

#[test]
fn the_chart_renders_lints_validates_and_its_alerts_pass_promtool() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/chart_test.py");
    // The agent binary cargo built next to this test (target/<profile>/agent): the chart's
    // arguments must be ones it accepts.
    let bin = std::env::current_exe()
        .ok()
        .and_then(|t| Some(t.parent()?.parent()?.join("agent")))
        .filter(|b| b.exists())
        .expect("target/<profile>/agent: build the agent first (the test command does)");
    let out = Command::new("python3")
        .arg(script)
        .env("AGENT_BIN", bin)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
