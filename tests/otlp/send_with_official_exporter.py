#!/usr/bin/env python3
"""Sends report-shaped logs and metrics to an OTLP/HTTP endpoint with code we did not write:
the official OpenTelemetry Python SDK and its `opentelemetry-exporter-otlp-proto-http`
exporters (protobuf), plus one OTLP/JSON request of each signal built with the official
`opentelemetry-proto` classes and `google.protobuf.json_format`.

agent/tests/collector.rs runs it against `agent collector` and then checks what was stored.

    send_with_official_exporter.py --endpoint http://127.0.0.1:4318 --token TOKEN --node NODE

Exits 0 when every export was accepted; prints one JSON line describing what was sent.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from google.protobuf import json_format
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

SCHEMA = "calico-dpagent.report/v1"
STREAM = "py-stream"


def report(node, sequence, findings):
    """A report as the agent's JSON has it (agent/src/report/otlp.rs, `Report`)."""
    return {
        "schema": SCHEMA,
        "node": node,
        "agent_version": "0.1.0-python",
        "stream": STREAM,
        "sequence": sequence,
        "generated_at_ms": int(time.time() * 1000) - 1000 + sequence,
        "mode": "VXLAN",
        "verdict": "drift" if findings else "clean",
        "findings": findings,
        "not_run": [],
        "counters": {"since_ms": 1700000000000, "drops": {"NO_SOCKET": 7}},
    }


ROUTE_MISSING = {
    "check": "route.missing",
    "severity": "critical",
    "subject": "10.244.1.0/26",
    "expected": "10.244.1.0/26 via 10.244.1.0 dev vxlan.calico onlink (block of node-b)",
    "actual": "no route",
    "hint": "ip route show 10.244.1.0/26",
    "since": 1700000000,
}


def attributes(r):
    """The record's attributes, as otlp.rs's `log_record` sets them."""
    return {
        "calico_dpagent.schema": SCHEMA,
        "k8s.node.name": r["node"],
        "calico_dpagent.mode": r["mode"],
        "calico_dpagent.verdict": r["verdict"],
        "calico_dpagent.checks": [f["check"] for f in r["findings"]],
        "calico_dpagent.stream": r["stream"],
        "calico_dpagent.sequence": r["sequence"],
    }


class RecordingLogExporter(OTLPLogExporter):
    """The official exporter; remembers each export's result (the SDK only logs failures)."""

    results = []

    def export(self, batch):
        result = super().export(batch)
        self.results.append(result)
        return result


class RecordingMetricExporter(OTLPMetricExporter):
    results = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result


def send_with_sdk(endpoint, token, node):
    headers = {"Authorization": f"Bearer {token}"}
    resource = Resource.create(
        {"service.name": "calico-dataplane-agent", "k8s.node.name": node, "host.name": node}
    )

    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(
        BatchLogRecordProcessor(
            RecordingLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers)
        )
    )
    logger = logs.get_logger("calico-dataplane-agent", "0.1.0")
    for r in [report(node, 1, []), report(node, 2, [ROUTE_MISSING])]:
        logger.emit(
            timestamp=r["generated_at_ms"] * 1_000_000,
            observed_timestamp=r["generated_at_ms"] * 1_000_000,
            severity_number=SeverityNumber.WARN if r["findings"] else SeverityNumber.INFO,
            severity_text="WARN" if r["findings"] else "INFO",
            event_name="calico_dpagent.report",
            body=json.dumps(r),
            attributes=attributes(r),
        )
    # Some other application's log on the same pipeline: not a report, not an error either.
    logger.emit(body="hello from another application", severity_number=SeverityNumber.INFO)
    logs.force_flush()
    logs.shutdown()

    reader = PeriodicExportingMetricReader(
        RecordingMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=headers),
        export_interval_millis=3_600_000,
    )
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meters.get_meter("calico-dataplane-agent", "0.1.0")
    drops = meter.create_counter("calico_dpagent.drops", unit="{packet}")
    drops.add(7, {"reason": "NO_SOCKET"})
    drops.add(2, {"reason": "NETFILTER_DROP"})
    conntrack = meter.create_gauge("calico_dpagent.conntrack.entries", unit="{entry}")
    conntrack.set(42)
    meters.force_flush()
    meters.shutdown()

    log_ok = RecordingLogExporter.results and all(
        r == LogRecordExportResult.SUCCESS for r in RecordingLogExporter.results
    )
    metric_ok = RecordingMetricExporter.results and all(
        r == MetricExportResult.SUCCESS for r in RecordingMetricExporter.results
    )
    return bool(log_ok), bool(metric_ok)


def post_json(url, token, message):
    body = json_format.MessageToJson(message, use_integers_for_enums=True).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def any_value(v):
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    return AnyValue(string_value=str(v))


def send_json(endpoint, token, node):
    """One OTLP/JSON request per signal, from the official protobuf classes."""
    r = report(node, 3, [ROUTE_MISSING])
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.add(key="k8s.node.name", value=AnyValue(string_value=node))
    sl = rl.scope_logs.add()
    sl.scope.name = "calico-dataplane-agent"
    rec = sl.log_records.add()
    rec.time_unix_nano = r["generated_at_ms"] * 1_000_000
    rec.observed_time_unix_nano = rec.time_unix_nano
    rec.severity_number = 13
    rec.severity_text = "WARN"
    rec.body.string_value = json.dumps(r)
    # A trace context, which json_format writes as base64 (OTLP/JSON has hex).
    rec.trace_id = bytes(range(1, 17))
    rec.span_id = bytes(range(1, 9))
    for k, v in attributes(r).items():
        rec.attributes.add(key=k, value=any_value(v))
    logs_status = post_json(f"{endpoint}/v1/logs", token, logs)

    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.add(key="k8s.node.name", value=AnyValue(string_value=node))
    m = rm.scope_metrics.add().metrics.add()
    m.name = "calico_dpagent.tcp.retransmits"
    m.sum.aggregation_temporality = 2
    m.sum.is_monotonic = True
    p = m.sum.data_points.add()
    p.start_time_unix_nano = 1_700_000_000_000_000_000
    p.time_unix_nano = r["generated_at_ms"] * 1_000_000
    p.as_int = 5
    metrics_status = post_json(f"{endpoint}/v1/metrics", token, metrics)
    return logs_status, metrics_status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--node", required=True)
    args = ap.parse_args()
    endpoint = args.endpoint.rstrip("/")
    log_ok, metric_ok = send_with_sdk(endpoint, args.token, args.node)
    (logs_code, logs_body), (metrics_code, metrics_body) = send_json(
        endpoint, args.token, args.node
    )
    print(
        json.dumps(
            {
                "sdk_logs_ok": log_ok,
                "sdk_metrics_ok": metric_ok,
                "json_logs": [logs_code, logs_body],
                "json_metrics": [metrics_code, metrics_body],
            }
        )
    )
    return 0 if log_ok and metric_ok and logs_code == 200 and metrics_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
