//! A real Prometheus server (Debian's package) scrapes `agent run` in the lab the way the
//! chart's ServiceMonitor describes, sees an injected fault's findings, and evaluates every
//! alert and dashboard expression the chart ships without error. The chart is rendered with
//! the real Helm engine (helm-python-sdk). Needs root.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{Daemon, LabGuard, get_in_netns, serial};
use xtask::lab::Fault;

const RELEASE: &str = "calico-dataplane-agent";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/calico-dataplane-agent")
}

/// What the chart tells Prometheus: the ServiceMonitor's endpoint, the PrometheusRule's rule
/// groups (as a rule file) and the dashboard's queries.
struct Rendered {
    path: String,
    rules_file: PathBuf,
    dashboard_exprs: Vec<String>,
    alert_exprs: Vec<String>,
}

fn render(dir: &Path) -> Rendered {
    let script = r#"
import json, sys, yaml, helm_python
chart = helm_python.Chart.load(sys.argv[1])
values = yaml.safe_load(open(sys.argv[2])) or {}
out = chart.render(values, name=sys.argv[3], namespace="calico-system")
docs = [d for path, text in out.items() if path.endswith((".yaml", ".yml")) for d in yaml.safe_load_all(text) if d]
sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
rule = next(d for d in docs if d["kind"] == "PrometheusRule")
with open(sys.argv[4], "w") as f:
    yaml.safe_dump({"groups": rule["spec"]["groups"]}, f)
def exprs(panels):
    for p in panels:
        yield from (t["expr"] for t in p.get("targets", []) if t.get("expr"))
        yield from exprs(p.get("panels", []))
dash = []
for d in docs:
    if d["kind"] == "ConfigMap":
        for k, v in (d.get("data") or {}).items():
            if k.endswith(".json"):
                dash += list(exprs(json.loads(v).get("panels", [])))
ep = sm["spec"]["endpoints"][0]
print(json.dumps({
    "path": ep.get("path", "/metrics"),
    "dashboard": dash,
    "alerts": [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]],
}))
"#;
    let rules_file = dir.join("rules.yml");
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(chart_dir())
        .arg(chart_dir().join("ci/all-features-values.yaml"))
        .arg(RELEASE)
        .arg(&rules_file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("render JSON");
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(String::from))
            .collect()
    };
    Rendered {
        path: v["path"].as_str().unwrap_or("/metrics").into(),
        rules_file,
        dashboard_exprs: strings("dashboard"),
        alert_exprs: strings("alerts"),
    }
}

/// Prometheus in the node's namespace, so it scrapes the agent on loopback there.
struct Prometheus {
    child: Child,
    netns: String,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(netns: &str, dir: &Path, target_port: u16, r: &Rendered) -> Self {
        // Outside the daemon's 19000-19999 (support::Daemon): they share the namespace.
        let port = 18900 + u16::try_from(std::process::id() % 90).unwrap_or(0);
        // The chart's scrape settings, faster: a test cannot wait 30 s per scrape.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {rules}\nscrape_configs:\n- job_name: {RELEASE}\n  metrics_path: {path}\n  scheme: http\n  static_configs:\n  - targets: ['127.0.0.1:{target_port}']\n    labels:\n      node: node-a\n",
            rules = r.rules_file.display(),
            path = r.path,
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "prometheus"])
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            netns: netns.into(),
            port,
        }
    }

    /// An instant query through the HTTP API: the JSON answer.
    fn query(&self, expr: &str) -> Option<serde_json::Value> {
        let (code, body) = get_in_netns(
            &self.netns,
            self.port,
            &format!("/api/v1/query?query={}", encode(expr)),
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 || v["status"] == "error").then_some(v)
    }

    /// Waits until `expr` returns at least one series.
    fn wait_for(&self, expr: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let n = self
                .query(expr)
                .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
                .unwrap_or(0);
            if n > 0 {
                return;
            }
            assert!(start.elapsed() < limit, "Prometheus: no series for {expr}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables replaced by what they stand for, so that Prometheus can evaluate the
/// dashboard's queries as Grafana would send them.
fn as_grafana_sends(expr: &str) -> String {
    let re = regex::Regex::new(r"\$\{?__(rate_)?interval\}?|\$\{?__range\}?").expect("regex");
    let with_ranges = re.replace_all(expr, "1m");
    let vars = regex::Regex::new(r"\$\{?(\w+)(:\w+)?\}?").expect("regex");
    vars.replace_all(&with_ranges, ".*").into_owned()
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_evaluates_the_charts_alerts_and_dashboard() {
    let _serial = serial();
    let lab = LabGuard::up("prm");
    let dir = std::env::temp_dir().join(format!("cdpt-prom{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rendered = render(&dir);
    assert!(
        !rendered.alert_exprs.is_empty(),
        "the chart ships no alerts"
    );
    assert!(
        !rendered.dashboard_exprs.is_empty(),
        "the chart ships no dashboard queries"
    );
    assert_eq!(rendered.path, "/metrics");
    let d = Daemon::start(&lab, "1", &[]);
    let prom = Prometheus::start(&d.netns, &dir, d.port, &rendered);
    prom.wait_for(
        &format!("up{{job=\"{RELEASE}\",node=\"node-a\"}} == 1"),
        Duration::from_secs(30),
    );
    // The injected fault reaches Prometheus as the findings series of its check.
    lab.0
        .fault(&lab.0.spec.nodes[0].name, Fault::RouteDelete)
        .expect("inject");
    prom.wait_for(
        "calico_dpagent_findings{check=\"route.missing\",severity=\"critical\"} > 0",
        Duration::from_secs(15),
    );
    // Every alert and dashboard expression evaluates without error against real data.
    let mut failures = Vec::new();
    for expr in rendered
        .alert_exprs
        .iter()
        .chain(&rendered.dashboard_exprs)
        .map(|e| as_grafana_sends(e))
    {
        match prom.query(&expr) {
            Some(v) if v["status"] == "success" => {}
            other => failures.push(format!("{expr}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Prometheus loaded the chart's rules and evaluates them without error; the drift alert
    // is pending or firing now.
    let start = Instant::now();
    loop {
        let (_, body) = get_in_netns(&prom.netns, prom.port, "/api/v1/rules").expect("rules API");
        let v: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok");
        let drift = rules.iter().any(|r| {
            r["name"] == "CalicoDataplaneDrift"
                && matches!(r["state"].as_str(), Some("pending" | "firing"))
        });
        if evaluated && drift {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "rules not evaluated cleanly: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
