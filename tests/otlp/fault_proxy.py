#!/usr/bin/env python3
"""An OTLP/HTTP proxy that misbehaves on command, and decodes what passes through it with the
official OpenTelemetry message classes (code we did not write).

It stands between `agent run --report-endpoint` and `agent collector` in the push tests:
every request is decoded with `opentelemetry.proto` and summarised as one JSON line in --log,
then answered according to the current mode:

  ok            forward to --upstream (or answer 200 when there is none)
  status:CODE   answer CODE (429 and 503 carry `Retry-After: 1`) without forwarding
  slow:SECONDS  forward, but answer only after SECONDS (longer than the agent's timeout)
  reset         close the connection with a TCP RST before answering
  down:SECONDS  stop listening for SECONDS (connections are refused), then come back

With --tls-cert/--tls-key it serves https. The mode is set with `POST /_control` (body: the mode) on the --control port, which never
misbehaves.
"""

import argparse
import gzip
import json
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

STATE = {"mode": "ok"}
LOCK = threading.Lock()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def summarise(path, body):
    """What the official classes read in the body; raises on a body they cannot decode."""
    if path == "/v1/logs":
        req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        out = []
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    out.append(
                        {
                            "resource": attrs(rl.resource.attributes),
                            "scope": sl.scope.name,
                            "attributes": attrs(rec.attributes),
                            "event_name": rec.event_name,
                            "severity_number": rec.severity_number,
                            "time_unix_nano": rec.time_unix_nano,
                            "body": json.loads(any_value(rec.body)),
                        }
                    )
        return {"path": path, "records": out}
    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
    out = []
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                out.append(
                    {
                        "resource": attrs(rm.resource.attributes),
                        "name": m.name,
                        "kind": kind,
                        "monotonic": getattr(data, "is_monotonic", None),
                        "temporality": getattr(data, "aggregation_temporality", None),
                        "points": [
                            {"attributes": attrs(p.attributes), "value": p.as_int}
                            for p in data.data_points
                        ],
                    }
                )
    return {"path": path, "metrics": out}


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with LOCK:
            mode = STATE["mode"]
        raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        try:
            line = summarise(self.path, raw)
        except Exception as e:  # noqa: BLE001 - the test reads the failure from the log
            line = {"path": self.path, "decode_error": str(e)}
        line["mode"] = mode
        line["content_type"] = self.headers.get("Content-Type")
        line["authorization"] = self.headers.get("Authorization")
        with LOCK, open(self.server.log_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if mode == "reset" or STATE.get("down"):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
            self.close_connection = True
            return
        if mode.startswith("status:"):
            code = int(mode.split(":")[1])
            self.send_response(code)
            if code in (429, 503):
                self.send_header("Retry-After", "1")
            msg = f"injected {code}".encode()
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        code, answer, ctype = 200, b"", "application/x-protobuf"
        if self.server.upstream:
            req = urllib.request.Request(
                self.server.upstream + self.path, data=body, method="POST"
            )
            for h in ("Content-Type", "Content-Encoding", "Authorization"):
                if self.headers.get(h):
                    req.add_header(h, self.headers[h])
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    code, answer = r.status, r.read()
                    ctype = r.headers.get("Content-Type", ctype)
            except urllib.error.HTTPError as e:
                code, answer = e.code, e.read()
                ctype = e.headers.get("Content-Type", ctype)
            except (urllib.error.URLError, OSError) as e:
                # The collector is down (killed, restarting): what a gateway answers.
                code, answer, ctype = 502, str(e).encode(), "text/plain"
        if mode.startswith("slow:"):
            time.sleep(float(mode.split(":")[1]))
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class Control(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def do_POST(self):
        mode = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        if mode.startswith("down:"):
            threading.Thread(target=self.server.down, args=(float(mode[5:]),)).start()
        else:
            with LOCK:
                STATE["mode"] = mode
        self.send_response(204)
        self.end_headers()


class Listener:
    """The proxy's listening socket, which `down:` closes and re-opens."""

    def __init__(self, addr, upstream, log_path, tls=None):
        self.addr, self.upstream, self.log_path, self.tls = addr, upstream, log_path, tls
        self.server = None
        self.up()

    def up(self):
        s = ThreadingHTTPServer(self.addr, Proxy)
        s.daemon_threads = True
        s.upstream, s.log_path = self.upstream, self.log_path
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            s.socket = ctx.wrap_socket(s.socket, server_side=True)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        self.server = s

    def down(self, seconds):
        # Keep-alive connections outlive the listening socket: while down they are cut too,
        # as they would be with the process gone.
        with LOCK:
            STATE["down"] = True
        self.server.shutdown()
        self.server.server_close()
        time.sleep(seconds)
        self.up()
        with LOCK:
            STATE["down"] = False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True, help="host:port for the agent")
    p.add_argument("--control", required=True, help="host:port for POST /_control")
    p.add_argument("--upstream", default="", help="the real endpoint's base URL")
    p.add_argument("--log", required=True, help="one JSON line per request")
    p.add_argument("--tls-cert", help="serve https with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="and this key")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    tls = (a.tls_cert, a.tls_key) if a.tls_cert else None
    listener = Listener((host, int(port)), a.upstream.rstrip("/"), a.log, tls)
    chost, cport = a.control.rsplit(":", 1)
    control = ThreadingHTTPServer((chost, int(cport)), Control)
    control.down = listener.down
    print("ready", flush=True)
    control.serve_forever()


if __name__ == "__main__":
    main()
