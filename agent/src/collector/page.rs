//! The cluster page at `/`: one server-rendered HTML page, no JavaScript. A summary line, the
//! nodes (drifting first), then each drifting node's findings in full. Node names and findings
//! come from the network: every piece of text is escaped.

use std::fmt::Write as _;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    App,
    api::{self, NodeView},
    store::{self, FindingRow},
};

/// Text as HTML (element content and quoted attribute values alike).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}\
.drift{color:#b00020;font-weight:bold}.clean{color:#1b5e20}.stale{color:#8a6d00}\
.critical{color:#b00020}.warning{color:#8a6d00}.info{color:#555}\
code{font-family:ui-monospace,monospace;font-size:0.95em}\
.summary{font-size:1.1em}";

/// Drifting nodes first, then stale ones, then by name.
fn order(nodes: &mut [NodeView]) {
    nodes.sort_by(|a, b| {
        (a.verdict != "drift", !a.stale, &a.node).cmp(&(b.verdict != "drift", !b.stale, &b.node))
    });
}

pub fn render(
    mut nodes: Vec<NodeView>,
    findings: &[FindingRow],
    stale_after_seconds: u64,
) -> String {
    order(&mut nodes);
    let drifting = nodes.iter().filter(|n| n.verdict == "drift").count();
    let stale = nodes.iter().filter(|n| n.stale).count();
    let missing: u64 = nodes.iter().map(|n| n.missing).sum();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\">\
         <title>Calico dataplane: cluster</title><style>{STYLE}</style></head><body>\n\
         <h1>Calico dataplane: cluster</h1>\n\
         <p class=\"summary\" id=\"summary\">{} node(s), <span class=\"{}\">{drifting} drifting</span>, \
         <span class=\"{}\">{stale} stale</span> (no report for {stale_after_seconds} s), {missing} missing report(s)</p>\n",
        nodes.len(),
        if drifting > 0 { "drift" } else { "clean" },
        if stale > 0 { "stale" } else { "clean" },
    );
    if nodes.is_empty() {
        h.push_str("<p>No node has reported yet.</p>\n");
    } else {
        h.push_str(
            "<table id=\"nodes\"><thead><tr><th>node</th><th>verdict</th><th>mode</th><th>findings</th>\
             <th>last report</th><th>gaps</th></tr></thead><tbody>\n",
        );
        for n in &nodes {
            let gaps = if n.gaps.is_empty() {
                "none".to_string()
            } else {
                let ranges: Vec<String> = n
                    .gaps
                    .iter()
                    .map(|g| {
                        if g.from == g.to {
                            g.from.to_string()
                        } else {
                            format!("{}–{}", g.from, g.to)
                        }
                    })
                    .collect();
                format!("{} missing ({})", n.missing, ranges.join(", "))
            };
            let f = &n.findings;
            let _ = writeln!(
                h,
                "<tr><td><a href=\"#node-{id}\">{name}</a></td><td class=\"{verdict}\">{verdict}</td><td>{mode}</td>\
                 <td>{total} ({c} critical, {w} warning, {i} info)</td>\
                 <td class=\"{age_class}\">{age} ago, #{seq}</td><td>{gaps}</td></tr>",
                id = escape(&n.node),
                name = escape(&n.node),
                verdict = escape(&n.verdict),
                mode = escape(&n.mode),
                total = f.total,
                c = f.critical,
                w = f.warning,
                i = f.info,
                age_class = if n.stale { "stale" } else { "" },
                age = age(n.age_seconds),
                seq = n.latest_sequence,
                gaps = escape(&gaps),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    for n in nodes
        .iter()
        .filter(|n| n.verdict == "drift" || n.findings.total > 0)
    {
        let _ = writeln!(
            h,
            "<h2 id=\"node-{}\">{}</h2>\n<table class=\"findings\"><thead><tr><th>check</th><th>severity</th>\
             <th>subject</th><th>expected</th><th>actual</th><th>hint</th></tr></thead><tbody>",
            escape(&n.node),
            escape(&n.node)
        );
        for f in findings.iter().filter(|f| f.node == n.node) {
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td class=\"{}\">{}</td><td><code>{}</code></td>\
                 <td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                escape(&f.check),
                escape(&f.severity),
                escape(&f.severity),
                escape(&f.subject),
                escape(&f.expected),
                escape(&f.actual),
                escape(&f.hint),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str(
        "<p>JSON: <a href=\"/v1/nodes\">/v1/nodes</a>, <a href=\"/v1/findings\">/v1/findings</a>; \
                Prometheus: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n",
    );
    h
}

pub async fn cluster(State(app): State<App>) -> Response {
    let nodes = api::load_nodes(&app).await;
    let findings = app.store.read(|c| store::findings(c, None, None)).await;
    match (nodes, findings) {
        (Ok(nodes), Ok(findings)) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            render(nodes.nodes, &findings, nodes.stale_after_seconds),
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "reading the store failed: {}",
                crate::observed::error_chain(&e)
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::api::Counts;

    fn node(name: &str, verdict: &str, critical: u64) -> NodeView {
        NodeView {
            node: name.into(),
            stream: "s".into(),
            latest_sequence: 4,
            generated_at: String::new(),
            generated_at_ms: 0,
            received_at: String::new(),
            received_at_ms: 0,
            age_seconds: 30,
            stale: false,
            agent_version: "0.1.0".into(),
            mode: "VXLAN".into(),
            verdict: verdict.into(),
            findings: Counts {
                critical,
                total: critical,
                ..Counts::default()
            },
            gaps: Vec::new(),
            missing: 0,
            reports_stored: 4,
            reports_received: 4,
            duplicates: 0,
        }
    }

    #[test]
    fn drifting_nodes_come_first_and_every_text_is_escaped() {
        let nodes = vec![
            node("a-clean", "clean", 0),
            node("z-<b>bad</b>", "drift", 1),
        ];
        let findings = vec![FindingRow {
            node: "z-<b>bad</b>".into(),
            check: "route.missing".into(),
            severity: "critical".into(),
            subject: "10.244.1.0/26".into(),
            expected: "via <vxlan.calico>".into(),
            actual: "\"absent\" & 'gone'".into(),
            hint: "ip route".into(),
            since: 0,
        }];
        let html = render(nodes, &findings, 180);
        assert!(html.contains("2 node(s)"), "{html}");
        assert!(html.contains("1 drifting"), "{html}");
        let bad = html.find("z-&lt;b&gt;bad&lt;/b&gt;").expect("escaped name");
        let clean = html.find("a-clean").expect("clean node");
        assert!(bad < clean, "drifting node first");
        assert!(html.contains("via &lt;vxlan.calico&gt;"), "{html}");
        assert!(
            html.contains("&quot;absent&quot; &amp; &#39;gone&#39;"),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<code>route.missing</code>"), "{html}");
    }
}
