#!/usr/bin/env python3
"""Tests of the Helm chart deploy/helm/calico-dataplane-agent, without a cluster.

    python3 tests/deploy/chart_test.py        # from the repository root (or anywhere)

Renders the chart with the Helm v4 engine (helm_python) for every values file in its ci/
directory, lints it, validates every manifest against the Kubernetes 1.33 schemas
(kubernetes_validate; the Prometheus Operator kinds, which have no built-in schema, against
tests/deploy/monitoring-crds.schema.json), checks the DaemonSet's security properties, the RBAC,
the report push (endpoint, spool, token, headers, CA), the optional collector (Deployment,
PVC, Service, TokenReview-only RBAC, and that it accepts exactly the agents' token), the
monitoring objects, the dashboard and the values schema, then runs `promtool check rules` on
the rendered PrometheusRule's groups and `promtool test rules` with tests/deploy/alerts_test.yaml.
Prints one line per check; exits 1 when one fails, 2 when a tool or module is missing.

Needs: Python 3.11, helm_python (PyPI helm-python-sdk), kubernetes_validate (brings jsonschema
and PyYAML), and promtool on PATH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    sys.exit(
        f"chart_test: missing Python module {e.name!r}: install helm-python-sdk and "
        "kubernetes-validate (which brings jsonschema and PyYAML)"
    )

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "deploy"
CHART = ROOT / "deploy" / "helm" / "calico-dataplane-agent"
KUBE_VERSION = "1.33"
# alerts_test.yaml's expected labels and annotations are written for this release.
RELEASE = "calico-dataplane-agent"
NAMESPACE = "calico-system"
FULLNAME = "calico-dataplane-agent"
RULES_FILE = "calico-dataplane-agent.rules.yaml"  # the name alerts_test.yaml's rule_files uses
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
DEFAULT_CAPS = ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "SYS_RESOURCE"]
ALERTS = {
    "CalicoDataplaneDrift",
    "CalicoDataplaneDrops",
    "CalicoConntrackPressure",
    "CalicoBGPSessionFlapping",
    "CalicoEBPFDataplaneDrops",
    "CalicoDataplaneAgentDown",
    "CalicoDataplaneAgentNotReady",
    "CalicoDataplaneAgentReportsFailing",
}


class Failure(Exception):
    pass


def expect(cond: object, msg: str) -> None:
    if not cond:
        raise Failure(msg)


RESULTS: list[tuple[str, str | None]] = []


def check(name: str) -> Callable[[Callable[[], str | None]], None]:
    """Runs the decorated function now as one named check and prints its line."""

    def run(fn: Callable[[], str | None]) -> None:
        start = time.monotonic()
        try:
            detail = fn()
        except Failure as e:
            RESULTS.append((name, str(e)))
            print(f"FAIL {name}: {e}", flush=True)
            return
        except Exception as e:  # an unexpected error is a failure of this check, not a crash
            RESULTS.append((name, f"{type(e).__name__}: {e}"))
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return
        RESULTS.append((name, None))
        took = time.monotonic() - start
        print(f"ok   {name}" + (f" ({detail})" if detail else "") + f" [{took:.2f}s]", flush=True)

    return run


# --- rendering ------------------------------------------------------------------------------


def load_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    return loaded or {}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


CHART_HANDLE = helm.Chart.load(str(CHART))


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template RELEASE -n NAMESPACE` would produce."""
    return CHART_HANDLE.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                docs.append(doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    expect(len(found) == 1, f"expected one {kind}, rendered {len(found)}")
    return found[0]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    expect(len(found) == 1, f"expected one {kind} {name}, rendered {len(found)}")
    return found[0]


def notes(rendered: dict[str, str]) -> str:
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
CI_VALUES = {p.name: load_values(p) for p in CI_FILES}
RENDERED: dict[str, dict[str, str]] = {}
DOCS: dict[str, list[dict[str, Any]]] = {}


def agent_container(ds: dict[str, Any]) -> dict[str, Any]:
    containers = ds["spec"]["template"]["spec"]["containers"]
    expect([c["name"] for c in containers] == ["agent"], "the pod must have exactly one container, 'agent'")
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- checks ---------------------------------------------------------------------------------


@check("Chart.yaml: apiVersion v2, appVersion 0.1.0; values.schema.json present")
def _() -> None:
    meta = CHART_HANDLE.metadata
    expect(meta.get("apiVersion") == "v2", f"apiVersion is {meta.get('apiVersion')!r}")
    expect(meta.get("appVersion") == "0.1.0", f"appVersion is {meta.get('appVersion')!r}")
    expect(CHART_HANDLE.schema is not None, "the chart has no values.schema.json")
    expect(CI_FILES, "no values files in ci/")


for ci_file in CI_FILES:

    @check(f"helm lint --strict (kube {KUBE_VERSION}) with ci/{ci_file.name}")
    def _(ci_file: Path = ci_file) -> str:
        report = helm.lint(
            str(CHART),
            CI_VALUES[ci_file.name],
            strict=True,
            namespace=NAMESPACE,
            kube_version=f"v{KUBE_VERSION}.0",
        )
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        expect(not report["errors"] and not bad, "; ".join(f"{m['path']}: {m['error']}" for m in bad) or str(report["errors"]))
        return f"{len(report['messages'])} info message(s)"

    @check(f"render with ci/{ci_file.name}")
    def _(ci_file: Path = ci_file) -> str:
        RENDERED[ci_file.name] = render(CI_VALUES[ci_file.name])
        DOCS[ci_file.name] = manifests(RENDERED[ci_file.name])
        return ", ".join(sorted(d["kind"] for d in DOCS[ci_file.name]))


MONITORING_SCHEMA = json.loads((HERE / "monitoring-crds.schema.json").read_text())


def validate_crd(doc: dict[str, Any]) -> None:
    schema = dict(MONITORING_SCHEMA, **{"$ref": f"#/$defs/{doc['kind']}"})
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise Failure(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


for ci_file in CI_FILES:

    @check(f"every manifest of ci/{ci_file.name} is valid for Kubernetes {KUBE_VERSION} (strict; monitoring kinds against tests/deploy/monitoring-crds.schema.json)")
    def _(ci_file: Path = ci_file) -> str:
        expect(ci_file.name in DOCS, "not rendered")
        counts = {"kubernetes": 0, "crd-subset": 0}
        for doc in DOCS[ci_file.name]:
            doc = {k: v for k, v in doc.items() if k != "__template"}
            if doc["kind"] in CRD_KINDS:
                validate_crd(doc)
                counts["crd-subset"] += 1
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise Failure(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                raise Failure(e.message)
            counts["kubernetes"] += 1
        return f"{counts['kubernetes']} against Kubernetes schemas, {counts['crd-subset']} against the CRD subset"


@check("default values render the DaemonSet, ServiceAccount, ClusterRole(Binding), Service; optional objects off")
def _() -> None:
    kinds = sorted(d["kind"] for d in DOCS["default-values.yaml"])
    expect(
        kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service", "ServiceAccount"],
        f"rendered {kinds}",
    )


@check("ci/all-features-values.yaml renders every optional object")
def _() -> None:
    kinds = sorted(d["kind"] for d in DOCS["all-features-values.yaml"])
    want = sorted(["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "PodMonitor",
                   "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"])
    expect(kinds == want, f"rendered {kinds}, want {want}")


SPOOL_MOUNT = "/var/lib/calico-dataplane-agent"


def security_checks(ds: dict[str, Any], caps: list[str], spool_host: str = SPOOL_MOUNT) -> None:
    pod = ds["spec"]["template"]["spec"]
    c = agent_container(ds)
    sc = c.get("securityContext", {})
    expect(sc.get("privileged") is False, "container must set privileged: false")
    expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    expect(sc.get("runAsUser") == 0, "runAsUser must be 0 (root without privilege)")
    seccomp = sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile")
    expect(seccomp == {"type": "RuntimeDefault"}, f"seccompProfile is {seccomp}")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop [ALL]")
    added = sc.get("capabilities", {}).get("add", [])
    expect(sorted(added) == sorted(caps), f"capabilities add {added}, want exactly {caps}")
    expect(not pod.get("hostPID") and not pod.get("hostIPC"), "no hostPID/hostIPC")
    expect(pod.get("hostNetwork") is True, "hostNetwork must be true")
    expect(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"dnsPolicy is {pod.get('dnsPolicy')}")
    expect(pod.get("priorityClassName") == "system-node-critical", f"priorityClassName is {pod.get('priorityClassName')}")
    tolerate_all = [t for t in pod.get("tolerations", []) if t == {"operator": "Exists"}]
    expect(tolerate_all, "tolerations must contain a bare `operator: Exists` (every taint)")
    probes = {name: c.get(name, {}).get("httpGet", {}) for name in ("livenessProbe", "readinessProbe")}
    expect(probes["livenessProbe"].get("path") == "/healthz", f"livenessProbe is {probes['livenessProbe']}")
    expect(probes["readinessProbe"].get("path") == "/readyz", f"readinessProbe is {probes['readinessProbe']}")
    ports = {p["name"]: p for p in c.get("ports", [])}
    expect("metrics" in ports and ports["metrics"]["containerPort"] == 9647, f"ports are {c.get('ports')}")
    for probe in probes.values():
        expect(probe.get("port") in ("metrics", 9647), f"probe port is {probe.get('port')}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    run = mounts.get("/run/calico-dataplane-agent")
    expect(run and "emptyDir" in volumes[run["name"]], "an emptyDir must be mounted at /run/calico-dataplane-agent")
    socket = env_of(c)["AGENT_SOCKET"]["value"]
    expect(socket.startswith("/run/calico-dataplane-agent/"), f"AGENT_SOCKET {socket} is outside the emptyDir")
    # Host paths: only these, and read-only except the xtables lock (iptables-save takes it) and
    # the report spool (host directory spool.hostPath, mounted at SPOOL_MOUNT).
    want_host = {
        "/sys/fs/bpf": ("Directory", True),
        "/sys/kernel/btf": ("Directory", True),
        "/run/xtables.lock": ("FileOrCreate", False),
        "/var/run/calico": ("DirectoryOrCreate", True),
        spool_host: ("DirectoryOrCreate", False),
    }
    for path, m in mounts.items():
        vol = volumes[m["name"]]
        if "hostPath" not in vol:
            # Besides emptyDirs only the report token and the report CA, both read-only.
            if "emptyDir" not in vol:
                expect(any(k in vol for k in ("projected", "configMap", "secret")),
                       f"volume {m['name']} is not hostPath, emptyDir, projected, configMap or secret")
                expect(m.get("readOnly") is True, f"{path} ({m['name']}) must be read-only")
            continue
        host = vol["hostPath"]["path"]
        expect(host in want_host and (host == path or (host == spool_host and path == SPOOL_MOUNT)),
               f"unexpected hostPath {host} at {path}")
        kind, ro = want_host[host]
        expect(vol["hostPath"].get("type") == kind, f"hostPath {host} has type {vol['hostPath'].get('type')}, want {kind}")
        expect(bool(m.get("readOnly")) == ro, f"{path} must be {'read-only' if ro else 'writable'}")
        expect(m.get("mountPropagation", "None") == "None", f"{path} must not propagate mounts")
    expect("/sys/fs/bpf" in mounts, "/sys/fs/bpf (Calico's pinned maps) must be mounted")
    expect(mounts["/sys/fs/bpf"].get("mountPropagation") == "None", "/sys/fs/bpf: mountPropagation None")


@check("DaemonSet security (defaults): not privileged, drop ALL, exactly NET_ADMIN NET_RAW BPF PERFMON SYS_RESOURCE, read-only root, no escalation, seccomp RuntimeDefault, hostNetwork, system-node-critical, tolerates all, probes, emptyDir socket dir")
def _() -> None:
    security_checks(one(DOCS["default-values.yaml"], "DaemonSet"), DEFAULT_CAPS)


@check("DaemonSet security: SYS_ADMIN only with ebpf.sysAdminForOldKernels")
def _() -> None:
    ds = one(manifests(render({"ebpf": {"sysAdminForOldKernels": True}})), "DaemonSet")
    security_checks(ds, DEFAULT_CAPS + ["SYS_ADMIN"])
    security_checks(one(DOCS["all-features-values.yaml"], "DaemonSet"), DEFAULT_CAPS + ["SYS_ADMIN"])


@check("DaemonSet (defaults): image, args, env of every flag, update strategy, grace period, resources, /sys/kernel/btf")
def _() -> None:
    ds = one(DOCS["default-values.yaml"], "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    c = agent_container(ds)
    expect(c["image"] == "calico-dataplane-agent:0.1.0", f"image is {c['image']}")
    expect(c["args"] == ["run"], f"args are {c['args']}")
    expect(spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
           f"updateStrategy is {spec['updateStrategy']}")
    expect(pod["terminationGracePeriodSeconds"] == 30, "terminationGracePeriodSeconds must be 30")
    expect(c["resources"] == {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}},
           f"resources are {c['resources']}")
    env = env_of(c)
    want = {
        "AGENT_LISTEN": "0.0.0.0:9647",
        "AGENT_SOCKET": "/run/calico-dataplane-agent/agent.sock",
        "AGENT_GRACE_SECONDS": "5",
        "AGENT_KUBE": "true",
        "AGENT_LOG": "info",
        "AGENT_NO_EBPF": "false",
        "AGENT_RESYNC_SECONDS": "60",
        "AGENT_POLL_RULES_SECONDS": "10",
        "AGENT_POLL_KERNEL_SECONDS": "10",
        "AGENT_POLL_SERVICES_SECONDS": "5",
        "AGENT_EVENT_INTERVAL_SECONDS": "60",
        "AGENT_CONNTRACK_PRESSURE": "0.9",
        "AGENT_FLOW_TABLE_SIZE": "65536",
        "AGENT_BIRD_SOCKET": "/var/run/calico/bird.ctl",
    }
    for name, value in want.items():
        expect(env.get(name, {}).get("value") == value, f"{name} is {env.get(name)}, want {value!r}")
    for name, path in {"AGENT_NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name"}.items():
        ref = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        expect(ref == path, f"{name} must come from the downward API {path}, is {env.get(name)}")
    expect("AGENT_NETLINK_RCVBUF" not in env, "AGENT_NETLINK_RCVBUF is set although netlinkRcvbuf is null")
    # The agent's clap flags take bools as true/false and numbers without exponents.
    for e in env.values():
        if "value" in e:
            expect(isinstance(e["value"], str) and "e+" not in e["value"], f"{e['name']}: {e['value']!r}")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    expect("/sys/kernel/btf" in mounts, "/sys/kernel/btf must be mounted by default")


@check("DaemonSet (ci/all-features): values reach the pod (image, env, tolerations, nodeSelector, affinity, resources, labels, annotations)")
def _() -> None:
    v = CI_VALUES["all-features-values.yaml"]
    ds = one(DOCS["all-features-values.yaml"], "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    meta = ds["spec"]["template"]["metadata"]
    c = agent_container(ds)
    env = env_of(c)
    expect(c["image"] == f"{v['image']['repository']}:{v['image']['tag']}", f"image is {c['image']}")
    expect(env["AGENT_GRACE_SECONDS"]["value"] == "2.5", "grace 2.5 must stay a fraction")
    expect(env["AGENT_NETLINK_RCVBUF"]["value"] == "8388608", f"AGENT_NETLINK_RCVBUF is {env.get('AGENT_NETLINK_RCVBUF')}")
    expect(env["AGENT_FLOW_TABLE_SIZE"]["value"] == "131072", "flow table size")
    expect(pod["tolerations"][0] == {"operator": "Exists"} and v["tolerations"][0] in pod["tolerations"],
           f"tolerations are {pod['tolerations']}")
    expect(pod["nodeSelector"] == v["nodeSelector"], "nodeSelector")
    expect(pod["affinity"] == v["affinity"], "affinity")
    expect(c["resources"] == v["resources"], "resources")
    expect(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%", "maxUnavailable 10%")
    expect(meta["labels"].get("example.com/team") == "networking", "podLabels")
    expect(meta["annotations"].get("example.com/scrape-note") == "metrics on 9647", "podAnnotations")
    expect("/sys/kernel/btf" not in {m["mountPath"] for m in c["volumeMounts"]}, "mountBtf: false still mounts BTF")
    expect(pod["imagePullSecrets"] == [{"name": "regcred"}], "imagePullSecrets")


def rbac_rules(docs: list[dict[str, Any]], name: str = FULLNAME) -> list[tuple[str, str, str]]:
    role = named(docs, "ClusterRole", name)
    out = []
    for rule in role["rules"]:
        expect(not rule.get("nonResourceURLs") and not rule.get("resourceNames"), f"unexpected rule {rule}")
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    expect("*" not in (g, r, v), f"wildcard in rule {rule}")
                    out.append((g, r, v))
    return out


@check("ClusterRole: read-only get/list/watch, the only writes create events.k8s.io/events and patch nodes/status")
def _() -> str:
    for name, docs in DOCS.items():
        triples = rbac_rules(docs)
        writes = sorted((g, r, v) for g, r, v in triples if v not in ("get", "list", "watch"))
        expect(writes == [("", "nodes/status", "patch"), ("events.k8s.io", "events", "create")],
               f"{name}: non-read verbs {writes}")
        reads = {(g, r) for g, r, v in triples if v in ("get", "list", "watch")}
        for v in ("get", "list", "watch"):
            expect(("", "nodes", v) in triples, f"{name}: {v} on nodes missing")
        for g in ("crd.projectcalico.org", "projectcalico.org"):
            for r in ("ippools", "ipamblocks", "blockaffinities", "felixconfigurations", "bgpconfigurations", "bgppeers"):
                for v in ("get", "list", "watch"):
                    expect((g, r, v) in triples, f"{name}: {v} on {g} {r} missing")
        expect(not any(r in ("secrets", "configmaps", "pods/exec") for _, r in reads), f"{name}: reads beyond the datastore")
        binding = named(docs, "ClusterRoleBinding", FULLNAME)
        ds = one(docs, "DaemonSet")
        sa = named(docs, "ServiceAccount", ds["spec"]["template"]["spec"]["serviceAccountName"])
        expect(binding["roleRef"]["name"] == FULLNAME, "binding names another role")
        expect(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}],
               f"binding subjects are {binding['subjects']}")
    return f"{len(DOCS)} renders"


def scrape_endpoint_checks(ep: dict[str, Any], interval: str) -> None:
    expect(ep.get("port") == "metrics" and ep.get("path") == "/metrics" and ep.get("scheme") == "http",
           f"endpoint is {ep}")
    expect(ep.get("interval") == interval, f"interval is {ep.get('interval')}, want {interval}")
    node = [r for r in ep.get("relabelings", [])
            if r.get("sourceLabels") == ["__meta_kubernetes_pod_node_name"] and r.get("targetLabel") == "node"]
    expect(node and node[0].get("action", "replace") == "replace", "no relabeling copying __meta_kubernetes_pod_node_name to node")


@check("Service (headless, port 9647 metrics), ServiceMonitor and PodMonitor (30s, /metrics, http, node relabeling)")
def _() -> None:
    svc = one(DOCS["default-values.yaml"], "Service")
    expect(svc["spec"].get("clusterIP") == "None", "the Service must be headless")
    expect(svc["spec"]["ports"] == [{"name": "metrics", "port": 9647, "targetPort": "metrics", "protocol": "TCP"}],
           f"ports are {svc['spec']['ports']}")
    docs = manifests(render({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}))
    sm, pm = one(docs, "ServiceMonitor"), one(docs, "PodMonitor")
    scrape_endpoint_checks(sm["spec"]["endpoints"][0], "30s")
    scrape_endpoint_checks(pm["spec"]["podMetricsEndpoints"][0], "30s")
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    for name, sel in (("ServiceMonitor", sm["spec"]["selector"]["matchLabels"]), ("PodMonitor", pm["spec"]["selector"]["matchLabels"])):
        target = svc["metadata"]["labels"] if name == "ServiceMonitor" else pod_labels
        expect(all(target.get(k) == v for k, v in sel.items()), f"the {name} selects nothing: {sel}")
    expect(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects no agent pod")
    all_features = DOCS["all-features-values.yaml"]
    scrape_endpoint_checks(one(all_features, "ServiceMonitor")["spec"]["endpoints"][0], "15s")
    no_service = manifests(render({"service": {"enabled": False}}))
    expect(not [d for d in no_service if d["kind"] == "Service"], "service.enabled false still renders a Service")


@check("serviceMonitor.enabled without service.enabled fails with a message naming both")
def _() -> None:
    try:
        render({"service": {"enabled": False}, "serviceMonitor": {"enabled": True}})
    except helm.HelmError as e:
        expect("service.enabled" in str(e) and "serviceMonitor.enabled" in str(e), f"unclear error: {e}")
        return
    raise Failure("rendered a ServiceMonitor that selects no Service")


def rejected(values: dict[str, Any], must_mention: list[str]) -> str:
    """The values must be refused by the schema, by render (install) and by lint, naming the key."""
    messages = []
    try:
        render(values)
    except helm.HelmValuesError as e:
        messages.append(str(e))
    else:
        raise Failure(f"render accepted {values}")
    try:
        CHART_HANDLE.validate_schema(CHART_HANDLE.merge_values(values))
    except helm.HelmValuesError as e:
        messages.append(str(e))
    else:
        raise Failure(f"validate_schema accepted {values}")
    report = helm.lint(str(CHART), values)
    expect(report["errors"], f"lint accepted {values}")
    messages.append(" ".join(report["errors"]))
    for m in messages:
        for word in must_mention:
            expect(word in m, f"error does not mention {word!r}: {m.strip()}")
    return messages[0].strip().splitlines()[-1].strip()


@check("values schema rejects agent.grace: \"soon\", naming /agent/grace")
def _() -> str:
    return rejected({"agent": {"grace": "soon"}}, ["/agent/grace"])


@check("values schema rejects an unknown top-level key (grace), naming it")
def _() -> str:
    return rejected({"grace": "soon"}, ["grace", "additional properties"])


@check("values schema rejects a misspelt nested key (ebpf.sysAdminForOldKernel), naming it")
def _() -> str:
    return rejected({"ebpf": {"sysAdminForOldKernel": True}}, ["sysAdminForOldKernel", "/ebpf"])


@check("values schema rejects out-of-range values (conntrackPressure 1.5, port 0, pullPolicy Sometimes, alert for: soon)")
def _() -> None:
    rejected({"agent": {"conntrackPressure": 1.5}}, ["/agent/conntrackPressure"])
    rejected({"agent": {"port": 0}}, ["/agent/port"])
    rejected({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"])
    rejected({"prometheusRule": {"alerts": {"drops": {"for": "soon"}}}}, ["/prometheusRule/alerts/drops/for"])


def schema_covers(schema: dict[str, Any], node: Any, path: str, root: dict[str, Any]) -> Iterator[str]:
    """Paths in values.yaml that the schema does not name explicitly."""
    while "$ref" in schema:
        schema = root["definitions"][schema["$ref"].split("/")[-1]]
    if not isinstance(node, dict):
        return
    props = schema.get("properties")
    free = schema.get("additionalProperties")
    for key, value in node.items():
        if props is not None and key in props:
            yield from schema_covers(props[key], value, f"{path}.{key}", root)
        elif isinstance(free, dict) or (free is None and props is None):
            continue  # a declared free-form map (labels, nodeSelector, affinity …)
        else:
            yield f"{path}.{key}"


@check("values.schema.json names every key of values.yaml, with additionalProperties false on the chart's own objects")
def _() -> str:
    schema = CHART_HANDLE.schema
    values = load_values(CHART / "values.yaml")
    missing = list(schema_covers(schema, values, "", schema))
    expect(not missing, f"not in the schema: {missing}")
    closed, total = 0, 0

    def walk(s: dict[str, Any]) -> None:
        nonlocal closed, total
        if "properties" in s:
            total += 1
            closed += s.get("additionalProperties") is False
            for sub in s["properties"].values():
                walk(sub)
        for sub in s.get("definitions", {}).values():
            walk(sub)

    walk(schema)
    expect(closed == total, f"{total - closed} object(s) with properties allow unknown keys")
    return f"{total} closed objects"


# --- report push and the collector ------------------------------------------------------

COLLECTOR = f"{FULLNAME}-collector"
COLLECTOR_KINDS = ["ClusterRole", "ClusterRoleBinding", "Deployment", "PersistentVolumeClaim", "Service",
                   "ServiceAccount", "ServiceMonitor"]


def args_of(container: dict[str, Any]) -> dict[str, list[str]]:
    """--flag=value arguments after the subcommand, by flag (a flag given without a value maps
    to [""]); every argument must be of one of these two forms."""
    out: dict[str, list[str]] = {}
    for a in container["args"][1:]:
        expect(a.startswith("--"), f"argument {a!r} is not a --flag")
        flag, _, value = a.partition("=")
        out.setdefault(flag, []).append(value)
    return out


def volume_at(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if m["mountPath"] == path:
            return volumes[m["name"]]
    return None


def collector_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if "collector" in d["metadata"]["name"]
            or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "collector"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@check("default values: no collector object, no report flag, no spool volume, no report token (nothing is pushed)")
def _() -> None:
    docs = DOCS["default-values.yaml"]
    expect(not collector_objects(docs), f"collector objects rendered: {[d['metadata']['name'] for d in collector_objects(docs)]}")
    ds = one(docs, "DaemonSet")
    c = agent_container(ds)
    expect(c["args"] == ["run"], f"args are {c['args']}")
    pod = ds["spec"]["template"]["spec"]
    names = {v["name"] for v in pod["volumes"]}
    expect(not names & {"spool", "report-token", "report-ca"}, f"report volumes without a push: {sorted(names)}")
    expect(volume_at(pod, c, SPOOL_MOUNT) is None, f"something is mounted at {SPOOL_MOUNT} without a push")


@check("report.endpoint alone: --report-endpoint and interval, the spool a writable hostPath /var/lib/calico-dataplane-agent (DirectoryOrCreate) by default with --spool-dir in it, no token")
def _() -> None:
    docs = manifests(render({"report": {"endpoint": "http://otel.observability.svc:4318"}}))
    expect(not collector_objects(docs), "collector objects rendered with only report.endpoint")
    ds = one(docs, "DaemonSet")
    security_checks(ds, DEFAULT_CAPS)
    pod, c = ds["spec"]["template"]["spec"], agent_container(ds)
    a = args_of(c)
    expect(a.get("--report-endpoint") == ["http://otel.observability.svc:4318"], f"args are {c['args']}")
    expect(a.get("--report-interval") == ["60"] and a.get("--spool-max-bytes") == ["67108864"], f"args are {c['args']}")
    expect("--report-token-file" not in a, "the ServiceAccount token goes to a foreign endpoint (serviceAccountToken auto)")
    vol = volume_at(pod, c, SPOOL_MOUNT)
    expect(vol and vol.get("hostPath") == {"path": SPOOL_MOUNT, "type": "DirectoryOrCreate"}, f"spool volume is {vol}")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == SPOOL_MOUNT)
    expect(not mount.get("readOnly"), "the spool mount must be writable")
    (spool_dir,) = a["--spool-dir"]
    expect(spool_dir.startswith(SPOOL_MOUNT + "/"), f"--spool-dir {spool_dir} is not on the spool mount (the root is read-only)")
    always = args_of(agent_container(one(manifests(render({"report": {
        "endpoint": "http://otel.observability.svc:4318", "serviceAccountToken": "always"}})), "DaemonSet")))
    expect("--report-token-file" in always, "serviceAccountToken: always sends no token")


@check("spool.volume emptyDir: no host path, an emptyDir above spool.maxBytes, valid for Kubernetes")
def _() -> None:
    docs = manifests(render({"report": {"endpoint": "https://otel.example.com"}, "spool": {"volume": "emptyDir", "maxBytes": 1048576}}))
    ds = one(docs, "DaemonSet")
    security_checks(ds, DEFAULT_CAPS)
    pod, c = ds["spec"]["template"]["spec"], agent_container(ds)
    vol = volume_at(pod, c, SPOOL_MOUNT)
    expect(vol and "emptyDir" in vol and "hostPath" not in vol, f"spool volume is {vol}")
    expect(int(vol["emptyDir"]["sizeLimit"]) > 1048576, f"emptyDir limit {vol['emptyDir']['sizeLimit']} is not above maxBytes")
    expect(all(v.get("hostPath", {}).get("path") != SPOOL_MOUNT for v in pod["volumes"]), "a spool hostPath remains")
    kubernetes_validate.validate({k: v for k, v in ds.items() if k != "__template"}, KUBE_VERSION, strict=True)


@check("ci/collector-values.yaml renders the agent's objects and the collector's Deployment, PVC, Service, ServiceAccount, ClusterRole(Binding), ServiceMonitor")
def _() -> None:
    docs = DOCS["collector-values.yaml"]
    got = sorted(d["kind"] for d in collector_objects(docs))
    expect(got == COLLECTOR_KINDS, f"collector objects {got}, want {COLLECTOR_KINDS}")
    for d in collector_objects(docs):
        expect(d["metadata"]["name"] == COLLECTOR, f"{d['kind']} is named {d['metadata']['name']}, want {COLLECTOR}")


@check("collector Deployment: 1 replica, Recreate, non-root 65532 (fsGroup 65532), no capabilities, read-only root, no escalation, seccomp RuntimeDefault, no host access, /healthz probes, PVC at the --db directory")
def _() -> None:
    v = CI_VALUES["collector-values.yaml"]["collector"]
    docs = DOCS["collector-values.yaml"]
    dep = named(docs, "Deployment", COLLECTOR)
    spec = dep["spec"]
    expect(spec["replicas"] == 1, f"replicas {spec['replicas']}: SQLite has one writer")
    expect(spec["strategy"] == {"type": "Recreate"}, f"strategy is {spec['strategy']}: the RWO volume and the SQLite writer need Recreate")
    pod = spec["template"]["spec"]
    psc = pod["securityContext"]
    for k, want in {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}.items():
        expect(psc.get(k) == want, f"pod securityContext {k} is {psc.get(k)}, want {want}")
    expect(not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), "the collector needs no host namespace")
    expect(not any("hostPath" in vol for vol in pod["volumes"]), "the collector mounts a host path")
    expect(pod["serviceAccountName"] == COLLECTOR, f"serviceAccountName is {pod['serviceAccountName']}")
    (c,) = pod["containers"]
    expect(c["args"][0] == "collector", f"args are {c['args']}")
    sc = c["securityContext"]
    expect(sc.get("capabilities") == {"drop": ["ALL"]}, f"capabilities are {sc.get('capabilities')}: drop ALL, add none")
    expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    expect(not sc.get("privileged"), "privileged")
    expect(sc.get("runAsUser", psc["runAsUser"]) != 0, "runs as root")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile")
    expect(seccomp == {"type": "RuntimeDefault"}, f"seccompProfile is {seccomp}")
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        expect(get["path"] == "/healthz" and get["port"] in ("otlp-http", 4318), f"{probe} is {get}")
    expect(c["ports"] == [{"name": "otlp-http", "containerPort": 4318, "protocol": "TCP"}], f"ports are {c['ports']}")
    expect(c["resources"] == v["resources"], f"resources are {c['resources']}")
    a = args_of(c)
    (db,) = a["--db"]
    data_dir = db.rsplit("/", 1)[0]
    vol = volume_at(pod, c, data_dir)
    pvc = named(docs, "PersistentVolumeClaim", COLLECTOR)
    expect(vol == {"name": vol and vol["name"], "persistentVolumeClaim": {"claimName": COLLECTOR}},
           f"the volume at {data_dir} (the directory of --db {db}) is {vol}, want the PVC {COLLECTOR}")
    writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
    expect(writable == [data_dir], f"writable mounts are {writable}, want only {data_dir}")
    expect(pvc["spec"]["accessModes"] == ["ReadWriteOnce"], f"accessModes {pvc['spec']['accessModes']}")
    expect(pvc["spec"]["resources"]["requests"]["storage"] == v["persistence"]["size"], "PVC size")
    expect(pvc["spec"].get("storageClassName") == v["persistence"]["storageClassName"], "PVC storageClassName")
    expect(a.get("--retention") == [v["retention"]] and a.get("--stale-after") == [str(v["staleAfter"])]
           and a.get("--max-body-bytes") == [str(v["maxBodyBytes"])], f"args are {c['args']}")
    expect(pod["nodeSelector"] == v["nodeSelector"] and pod["tolerations"] == v["tolerations"]
           and pod["affinity"] == v["affinity"] and pod["priorityClassName"] == v["priorityClassName"], "scheduling values")
    labels = spec["template"]["metadata"]["labels"]
    expect(labels.get("example.com/team") == "networking", "podLabels")


@check("collector RBAC: a ClusterRole of exactly [create tokenreviews.authentication.k8s.io], bound to the collector's own ServiceAccount")
def _() -> None:
    docs = DOCS["collector-values.yaml"]
    role = named(docs, "ClusterRole", COLLECTOR)
    expect(role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}],
           f"rules are {role['rules']}")
    binding = named(docs, "ClusterRoleBinding", COLLECTOR)
    expect(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COLLECTOR},
           f"roleRef is {binding['roleRef']}")
    expect(binding["subjects"] == [{"kind": "ServiceAccount", "name": COLLECTOR, "namespace": NAMESPACE}],
           f"subjects are {binding['subjects']}")
    named(docs, "ServiceAccount", COLLECTOR)
    agent_sa = one(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    expect(agent_sa != COLLECTOR, "the agent and the collector share a ServiceAccount")
    no_rbac = manifests(render({"collector": {"enabled": True}, "rbac": {"create": False}}))
    expect(not [d for d in no_rbac if d["kind"].startswith("ClusterRole")], "rbac.create false still renders RBAC")


@check("collector on: the agents push to the collector Service with a projected token of report.tokenAudience; the collector allows exactly that audience and the agents' namespace/ServiceAccount")
def _() -> None:
    values = CI_VALUES["collector-values.yaml"]
    docs = DOCS["collector-values.yaml"]
    svc = named(docs, "Service", COLLECTOR)
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "otlp-http")
    expect(port["port"] == 4318 and port["targetPort"] == "otlp-http", f"Service ports are {svc['spec']['ports']}")
    ds = one(docs, "DaemonSet")
    security_checks(ds, DEFAULT_CAPS)
    pod, c = ds["spec"]["template"]["spec"], agent_container(ds)
    a = args_of(c)
    want = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"
    expect(a.get("--report-endpoint") == [want], f"--report-endpoint is {a.get('--report-endpoint')}, want {want}")
    expect(a.get("--report-interval") == [str(values["report"]["interval"])], f"--report-interval is {a.get('--report-interval')}")
    (token_file,) = a["--report-token-file"]
    token_dir, _, token_name = token_file.rpartition("/")
    vol = volume_at(pod, c, token_dir)
    expect(vol and "projected" in vol, f"--report-token-file {token_file} is not in a projected volume ({vol})")
    (source,) = vol["projected"]["sources"]
    audience = values["report"]["tokenAudience"]
    expect(source.get("serviceAccountToken") == {"audience": audience, "expirationSeconds": 3600, "path": token_name},
           f"projected source is {source}")
    collector = named(docs, "Deployment", COLLECTOR)["spec"]["template"]["spec"]["containers"][0]
    ca = args_of(collector)
    expect("--kube-tokenreview" in ca, f"collector args are {collector['args']}")
    expect(not {"--no-auth", "--token-file"} & set(ca), "the collector must authenticate by TokenReview only")
    expect(ca.get("--audience") == [audience], f"--audience is {ca.get('--audience')}, the agents' tokens carry {audience}")
    want_sa = f"{NAMESPACE}/{pod['serviceAccountName']}"
    expect(pod["serviceAccountName"] == values["serviceAccount"]["name"], "agent ServiceAccount name")
    expect(ca.get("--allow-service-account") == [want_sa], f"--allow-service-account is {ca.get('--allow-service-account')}, want {want_sa}")
    (spool,) = a["--spool-dir"]
    expect(volume_at(pod, c, SPOOL_MOUNT)["hostPath"]["path"] == SPOOL_MOUNT and spool.startswith(SPOOL_MOUNT + "/"),
           "the spool is a hostPath by default with the collector too")


@check("collector selectors: the agent's DaemonSet, Service and monitors never select the collector, nor the collector's the agents; the collector's ServiceMonitor scrapes a port of its Service")
def _() -> None:
    docs = DOCS["collector-values.yaml"]
    ds = one(docs, "DaemonSet")
    dep = named(docs, "Deployment", COLLECTOR)
    agent_pod = ds["spec"]["template"]["metadata"]["labels"]
    coll_pod = dep["spec"]["template"]["metadata"]["labels"]
    agent_svc, coll_svc = named(docs, "Service", FULLNAME), named(docs, "Service", COLLECTOR)
    agent_sm, coll_sm = named(docs, "ServiceMonitor", FULLNAME), named(docs, "ServiceMonitor", COLLECTOR)
    for what, sel, own, other in (
        ("DaemonSet", ds["spec"]["selector"]["matchLabels"], agent_pod, coll_pod),
        ("agent Service", agent_svc["spec"]["selector"], agent_pod, coll_pod),
        ("agent ServiceMonitor", agent_sm["spec"]["selector"]["matchLabels"], agent_svc["metadata"]["labels"], coll_svc["metadata"]["labels"]),
        ("Deployment", dep["spec"]["selector"]["matchLabels"], coll_pod, agent_pod),
        ("collector Service", coll_svc["spec"]["selector"], coll_pod, agent_pod),
        ("collector ServiceMonitor", coll_sm["spec"]["selector"]["matchLabels"], coll_svc["metadata"]["labels"], agent_svc["metadata"]["labels"]),
    ):
        expect(matches(sel, own), f"the {what} selects nothing of its own: {sel}")
        expect(not matches(sel, other), f"the {what} also selects the other component: {sel}")
    pm = manifests(render({"collector": {"enabled": True}, "podMonitor": {"enabled": True}}))
    expect(not matches(one(pm, "PodMonitor")["spec"]["selector"]["matchLabels"], coll_pod), "the agent PodMonitor selects the collector")
    (ep,) = coll_sm["spec"]["endpoints"]
    expect(ep["port"] in {p["name"] for p in coll_svc["spec"]["ports"]} and ep["path"] == "/metrics", f"endpoint is {ep}")
    expect(ep["interval"] == CI_VALUES["collector-values.yaml"]["collector"]["serviceMonitor"]["interval"], "interval")
    expect(coll_sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "serviceMonitor labels")


@check("the agent alerts' job matcher (anchored regex) matches the agent's job and not the collector's")
def _() -> None:
    docs = DOCS["collector-values.yaml"]
    jobs = {}
    for name in (FULLNAME, COLLECTOR):
        (ep,) = named(docs, "ServiceMonitor", name)["spec"]["endpoints"]
        jobs[name] = next(r["replacement"] for r in ep["relabelings"] if r.get("targetLabel") == "job")
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    matchers = set(re.findall(r'job=~"([^"]*)"', rules["CalicoDataplaneAgentDown"]["expr"]))
    expect(len(matchers) == 1, f"job matchers {matchers}")
    (m,) = matchers
    expect(re.fullmatch(m, jobs[FULLNAME]), f"{m!r} does not match the agent's job {jobs[FULLNAME]!r}")
    expect(not re.fullmatch(m, jobs[COLLECTOR]), f"{m!r} matches the collector's job {jobs[COLLECTOR]!r}")


@check("ci/external-otel-values.yaml: --report-endpoint, a literal and a Secret header (through an env var), the CA from a ConfigMap as --report-ca-file, no token, no collector")
def _() -> None:
    v = CI_VALUES["external-otel-values.yaml"]["report"]
    docs = DOCS["external-otel-values.yaml"]
    expect(not collector_objects(docs), "collector objects rendered")
    ds = one(docs, "DaemonSet")
    security_checks(ds, DEFAULT_CAPS, spool_host=CI_VALUES["external-otel-values.yaml"]["spool"]["hostPath"])
    pod, c = ds["spec"]["template"]["spec"], agent_container(ds)
    a = args_of(c)
    expect(a.get("--report-endpoint") == [v["endpoint"]], f"--report-endpoint is {a.get('--report-endpoint')}")
    expect("--report-token-file" not in a, "the ServiceAccount token goes to an external endpoint")
    headers = a.get("--report-header", [])
    expect(headers[0] == "X-Scope-OrgID=networking", f"headers are {headers}")
    name, _, ref = headers[1].partition("=")
    var = re.fullmatch(r"\$\(([A-Z0-9_]+)\)", ref)
    expect(name == "Authorization" and var, f"the Secret header is {headers[1]!r}, want Authorization=$(VAR)")
    env = env_of(c)[var.group(1)]
    expect(env.get("valueFrom") == {"secretKeyRef": v["headers"][1]["secretKeyRef"]}, f"{var.group(1)} is {env}")
    (ca_file,) = a["--report-ca-file"]
    ca_dir, _, key = ca_file.rpartition("/")
    vol = volume_at(pod, c, ca_dir)
    expect(vol and vol.get("configMap") == {"name": v["ca"]["configMapName"], "items": [{"key": key, "path": key}]}
           and key == v["ca"]["key"], f"--report-ca-file {ca_file}: volume {vol}")
    secret = one(manifests(render({"report": {"endpoint": v["endpoint"], "ca": {"secretName": "otel-ca"}}})), "DaemonSet")
    svol = volume_at(secret["spec"]["template"]["spec"], agent_container(secret), ca_dir)
    expect(svol and svol.get("secret", {}).get("secretName") == "otel-ca", f"CA from a Secret: {svol}")


@check("report.headers: a literal \"$\" survives Kubernetes' $(VAR) expansion of args")
def _() -> None:
    ds = one(manifests(render({"report": {"endpoint": "https://otel.example.com", "headers": [{"name": "X-Key", "value": "a$(b)c"}]}})), "DaemonSet")
    headers = args_of(agent_container(ds))["--report-header"]
    expect(headers == ["X-Key=a$$(b)c"], f"headers are {headers}")


@check("collector persistence: existingClaim is used and no PVC rendered; disabled is an emptyDir; a long release name keeps the Service a DNS label the agents resolve")
def _() -> None:
    docs = manifests(render({"collector": {"enabled": True, "persistence": {"existingClaim": "reports-db"}}}))
    expect(not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "a PVC rendered with existingClaim")
    pod = named(docs, "Deployment", COLLECTOR)["spec"]["template"]["spec"]
    expect({"name": "data", "persistentVolumeClaim": {"claimName": "reports-db"}} in pod["volumes"], f"volumes are {pod['volumes']}")
    docs = manifests(render({"collector": {"enabled": True, "persistence": {"enabled": False}}}))
    expect(not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "a PVC rendered with persistence off")
    pod = named(docs, "Deployment", COLLECTOR)["spec"]["template"]["spec"]
    expect(any("emptyDir" in v for v in pod["volumes"]), f"volumes are {pod['volumes']}")
    long = "x" * 60
    docs = manifests(render({"collector": {"enabled": True}, "fullnameOverride": long}))
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "collector")
    name = svc["metadata"]["name"]
    expect(len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), f"Service name {name!r}")
    endpoint = args_of(agent_container(one(docs, "DaemonSet")))["--report-endpoint"][0]
    expect(endpoint.startswith(f"http://{name}.{NAMESPACE}.svc:"), f"--report-endpoint {endpoint} for Service {name}")
    for d in docs:
        kubernetes_validate.validate({k: v for k, v in d.items() if k != "__template"}, KUBE_VERSION, strict=True)
    sa = manifests(render({"collector": {"enabled": True}, "serviceAccount": {"create": False, "name": "existing"}}))
    args = args_of(named(sa, "Deployment", COLLECTOR)["spec"]["template"]["spec"]["containers"][0])
    expect(args["--allow-service-account"] == [f"{NAMESPACE}/existing"], f"--allow-service-account {args['--allow-service-account']}")


def refused(values: dict[str, Any], must_mention: list[str]) -> str:
    """The values pass the schema but the chart's own checks refuse them, naming the keys."""
    try:
        render(values)
    except helm.HelmError as e:
        for word in must_mention:
            expect(word in str(e), f"error does not mention {word!r}: {e}")
        return str(e).strip().splitlines()[-1].strip()
    raise Failure(f"rendered {values}")


@check("values schema rejects collector.persistence.size: 20 and report.interval: -1 (and a bad spool.volume, serviceAccountToken, header), naming each key")
def _() -> str:
    first = rejected({"collector": {"persistence": {"size": 20}}}, ["/collector/persistence/size", "string"])
    rejected({"report": {"interval": -1}}, ["/report/interval", "minimum"])
    rejected({"spool": {"volume": "tmpfs"}}, ["/spool/volume"])
    rejected({"report": {"serviceAccountToken": "sometimes"}}, ["/report/serviceAccountToken"])
    rejected({"report": {"headers": [{"name": "Bad Name", "value": "x"}]}}, ["/report/headers/0/name"])
    rejected({"report": {"headers": [{"name": "X-A", "value": "a\nb"}]}}, ["/report/headers/0/value"])
    rejected({"report": {"endpoint": "otel:4318"}}, ["/report/endpoint"])
    rejected({"collector": {"retention": "1 week"}}, ["/collector/retention"])
    return first


@check("the chart refuses contradictory report values with the fix: CA from both, /v1/logs in the endpoint, collector without token, Authorization with the token, staleAfter within one interval")
def _() -> None:
    refused({"report": {"endpoint": "https://o.example", "ca": {"configMapName": "a", "secretName": "b"}}}, ["report.ca", "not both"])
    refused({"report": {"endpoint": "https://o.example/v1/logs"}}, ["report.endpoint", "/v1/logs"])
    refused({"collector": {"enabled": True}, "report": {"serviceAccountToken": "never"}}, ["report.serviceAccountToken", "collector.enabled"])
    refused({"collector": {"enabled": True}, "report": {"headers": [{"name": "authorization", "value": "Bearer x"}]}},
            ["Authorization", "report.serviceAccountToken"])
    refused({"collector": {"enabled": True, "staleAfter": 60}}, ["collector.staleAfter", "report.interval"])


@check("NOTES.txt with the collector: `kubectl port-forward svc/<collector> 4318` and http://localhost:4318/")
def _() -> None:
    text = notes(RENDERED["collector-values.yaml"])
    for want in (f"kubectl port-forward -n {NAMESPACE} svc/{COLLECTOR} 4318", "http://localhost:4318/"):
        expect(want in text, f"NOTES.txt lacks {want!r}")
    expect("port-forward" not in notes(RENDERED["default-values.yaml"]), "NOTES.txt mentions the collector without it")


@check("NOTES.txt shows `kubectl exec … ds/<fullname> -c agent -- agent diag` and `agent check`")
def _() -> None:
    text = notes(RENDERED["default-values.yaml"])
    for cmd in ("diag", "check"):
        want = f"kubectl exec -n {NAMESPACE} ds/{FULLNAME} -c agent -- agent {cmd}"
        expect(want in text, f"NOTES.txt lacks {want!r}")


# --- alerting rules -------------------------------------------------------------------------


def rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(docs, "PrometheusRule")["spec"]["groups"]


DEFAULT_RULES_VALUES = {"prometheusRule": {"enabled": True}}


def readme_metrics() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("#### Metrics", 1)[1].split("\n#", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z0-9_]+)`", first_cell))
    expect(len(names) > 10, f"could not read README's Metrics table ({names})")
    return names


def used_metrics(exprs: list[str]) -> set[str]:
    out = set()
    for e in exprs:
        for m in re.findall(r"calico_dpagent_([a-z0-9_]+)", e):
            out.add(re.sub(r"_(bucket|sum|count)$", "", m) if re.search(r"_seconds_(bucket|sum|count)$", m) else m)
    return out


@check("PrometheusRule: the eight alerts, each with severity, summary, and a description naming `agent diag`")
def _() -> None:
    groups = rule_groups(manifests(render(DEFAULT_RULES_VALUES)))
    rules = [r for g in groups for r in g["rules"]]
    names = {r["alert"] for r in rules}
    expect(names == ALERTS, f"alerts are {sorted(names)}")
    for r in rules:
        expect(r.get("labels", {}).get("severity"), f"{r['alert']}: no severity label")
        ann = r.get("annotations", {})
        expect(ann.get("summary") and ann.get("description"), f"{r['alert']}: summary and description required")
        expect(re.search(r"kubectl exec -n \S+ .* -c agent -- agent diag", ann["description"]),
               f"{r['alert']}: description does not say to run `kubectl exec … -- agent diag`")
        expect(r.get("for"), f"{r['alert']}: no `for`")


@check("PrometheusRule: `for`, thresholds and enabled come from values")
def _() -> None:
    values = {"prometheusRule": {"enabled": True, "alerts": {
        "drift": {"for": "7m"},
        "drops": {"for": "15m", "threshold": 50, "rateWindow": "2m", "severity": "critical"},
        "conntrackPressure": {"threshold": 0.75},
        "reportsFailing": {"window": "1h", "threshold": 3},
        "bgpFlapping": {"enabled": False},
        "ebpfDrops": {"for": "3m", "threshold": 20, "rateWindow": "10m"},
    }}}
    rules = {r["alert"]: r for g in rule_groups(manifests(render(values))) for r in g["rules"]}
    expect("CalicoBGPSessionFlapping" not in rules, "a disabled alert is still rendered")
    expect(rules["CalicoDataplaneDrift"]["for"] == "7m", "drift for")
    d = rules["CalicoDataplaneDrops"]
    expect(d["for"] == "15m" and "[2m]" in d["expr"] and d["expr"].rstrip().endswith("> 50")
           and d["labels"]["severity"] == "critical", f"drops rule is {d}")
    expect("> 0.75" in rules["CalicoConntrackPressure"]["expr"], "conntrack threshold")
    e = rules["CalicoEBPFDataplaneDrops"]
    expect(e["for"] == "3m" and "[10m]" in e["expr"] and e["expr"].rstrip().endswith("> 20"),
           f"eBPF drops rule is {e}")
    r = rules["CalicoDataplaneAgentReportsFailing"]
    expect("[1h]" in r["expr"] and r["expr"].rstrip().endswith("> 3"), f"reports rule is {r['expr']}")


@check("alerting rules and dashboard use only metrics from README's Metrics table")
def _() -> str:
    known = readme_metrics()
    rules = [r["expr"] for g in rule_groups(manifests(render(DEFAULT_RULES_VALUES))) for r in g["rules"]]
    unknown = used_metrics(rules) - known
    expect(not unknown, f"rules use unknown metrics {sorted(unknown)}")
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [json.dumps(v.get("query", "")) for v in dash["templating"]["list"]]
    unknown = used_metrics(exprs) - known
    expect(not unknown, f"dashboard uses unknown metrics {sorted(unknown)}")
    return f"README lists {len(known)}"


def promtool(*args: str, cwd: Path) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        raise Failure("promtool not found on PATH (Debian package prometheus)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    expect(proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{out}")
    return out


WORK = Path(tempfile.mkdtemp(prefix="cdpa-chart-test-"))


def write_rules(docs: list[dict[str, Any]], path: Path) -> None:
    path.write_text(yaml.safe_dump({"groups": rule_groups(docs)}, sort_keys=False))


for label, values in (("defaults + prometheusRule.enabled", DEFAULT_RULES_VALUES),
                      ("ci/all-features-values.yaml", CI_VALUES.get("all-features-values.yaml", {}))):

    @check(f"promtool check rules on the PrometheusRule's groups ({label})")
    def _(values: dict[str, Any] = values, label: str = label) -> str:
        path = WORK / (re.sub(r"[^a-z0-9]+", "-", label.lower()) + ".rules.yaml")
        write_rules(manifests(render(values)), path)
        return promtool("check", "rules", str(path), cwd=WORK).splitlines()[-1].strip()


@check("tests/deploy/alerts_test.yaml has a firing and a quiet case for every alert")
def _() -> str:
    spec = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    expect(spec.get("rule_files") == [RULES_FILE], f"rule_files must be [{RULES_FILE}]")
    fires, quiet = set(), set()
    for test in spec["tests"]:
        for t in test.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    expect(fires >= ALERTS, f"no firing case for {sorted(ALERTS - fires)}")
    expect(quiet >= ALERTS, f"no quiet case for {sorted(ALERTS - quiet)}")
    return f"{len(spec['tests'])} test groups"


@check("promtool test rules tests/deploy/alerts_test.yaml (on the rules rendered with defaults)")
def _() -> str:
    write_rules(manifests(render(DEFAULT_RULES_VALUES)), WORK / RULES_FILE)
    shutil.copy(HERE / "alerts_test.yaml", WORK / "alerts_test.yaml")
    out = promtool("test", "rules", "alerts_test.yaml", cwd=WORK)
    return out.splitlines()[-1].strip()


# --- dashboard ------------------------------------------------------------------------------


@check("dashboard: valid JSON, unique panel ids, a panel for every required metric, shipped as a ConfigMap with grafana_dashboard: \"1\"")
def _() -> str:
    raw = (CHART / "files" / "dashboard.json").read_text()
    dash = json.loads(raw)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    expect(len(ids) == len(set(ids)), "duplicate panel ids")
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    expect(all(t.get("refId") for p in panels for t in p.get("targets", [])), "a target without refId")
    required = {"findings", "drift_detection_seconds", "verify_duration_seconds", "drops_total",
                "iface_packets_total", "conntrack_entries", "conntrack_max", "netlink_events_total",
                "netlink_overruns_total", "resyncs_total", "ebpf_attached", "resident_memory_bytes"}
    missing = required - used_metrics(exprs)
    expect(not missing, f"no panel for {sorted(missing)}")
    expect(any("histogram_quantile" in e and "drift_detection_seconds_bucket" in e for e in exprs),
           "drift detection latency must be a histogram quantile")
    expect(any("histogram_quantile(0.99" in e and "verify_duration_seconds_bucket" in e for e in exprs),
           "verify duration p99 missing")
    cm = one(DOCS["all-features-values.yaml"], "ConfigMap")
    expect(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "ConfigMap lacks label grafana_dashboard: \"1\"")
    (data,) = cm["data"].values()
    expect(json.loads(data) == dash, "the ConfigMap does not carry files/dashboard.json unchanged")
    return f"{len(panels)} panels"


# --- the binary ---------------------------------------------------------------------------

AGENT_BIN = os.environ.get("AGENT_BIN")


@check("every ci/ render's agent and collector args are accepted by the agent binary (AGENT_BIN)")
def _() -> str:
    if not AGENT_BIN:
        return "skipped: AGENT_BIN not set (the test command sets it)"
    seen = 0
    for name, docs in DOCS.items():
        for d in docs:
            if d["kind"] not in ("DaemonSet", "Deployment"):
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                # clap parses and validates every argument before it acts on --help.
                r = subprocess.run([AGENT_BIN, *c["args"], "--help"], capture_output=True, text=True)
                expect(r.returncode == 0, f"{name}: {d['metadata']['name']}: `agent {' '.join(c['args'])}`: {r.stderr.strip()}")
                seen += 1
    return f"{seen} containers"


# --- summary --------------------------------------------------------------------------------

shutil.rmtree(WORK, ignore_errors=True)
CHART_HANDLE.close()
failed = [name for name, err in RESULTS if err]
print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
if failed:
    print("failed: " + "; ".join(failed), file=sys.stderr)
    sys.exit(1)
