{{/* The chart name, or nameOverride. */}}
{{- define "cdpa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". Also the Prometheus job of both monitors.
*/}}
{{- define "cdpa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cdpa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the agent's pods (immutable in the DaemonSet). */}}
{{- define "cdpa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdpa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cdpa.labels" -}}
helm.sh/chart: {{ include "cdpa.chart" . }}
{{ include "cdpa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cdpa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cdpa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cdpa.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
A number as the agent's flag parser reads it: integers without an exponent (values arrive as
float64, which toString would print as 1e+06), fractions as they are.
*/}}
{{- define "cdpa.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
The scrape endpoint both monitors share: /metrics over http on the "metrics" port, the node name
copied from the pod's spec into label "node" (the agent's own labels are only check, severity
and the like), and the job set to the full name so the alerts find it either way.
*/}}
{{- define "cdpa.scrapeEndpoint" -}}
port: metrics
path: /metrics
scheme: http
interval: {{ .monitor.interval }}
scrapeTimeout: {{ .monitor.scrapeTimeout }}
relabelings:
  - action: replace
    sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  - action: replace
    replacement: {{ include "cdpa.fullname" .root }}
    targetLabel: job
{{- end }}

{{/*
The label matcher of the agent's scrape job, for the alerts: the job both monitors set and
nothing longer (PromQL anchors regexes), so the collector's job "<fullname>-collector" is never
taken for an agent. A regex rather than "=" because absent() copies "=" matchers into its
alert's labels.
*/}}
{{- define "cdpa.jobMatcher" -}}
job=~"{{ include "cdpa.fullname" . }}"
{{- end }}

{{/*
The collector's name: the full name cut to leave room for "-collector", so the Service name
(which the agents resolve) stays a 63-character DNS label.
*/}}
{{- define "cdpa.collectorName" -}}
{{- printf "%s-collector" (include "cdpa.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the collector's pods. app.kubernetes.io/name differs from the agent's so that
none of the agent's selectors (the DaemonSet's, which is immutable, its Service's, both
monitors') ever matches the collector.
*/}}
{{- define "cdpa.collectorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-collector" (include "cdpa.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cdpa.collectorLabels" -}}
helm.sh/chart: {{ include "cdpa.chart" . }}
{{ include "cdpa.collectorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: collector
app.kubernetes.io/part-of: {{ include "cdpa.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cdpa.collectorServiceAccountName" -}}
{{- if .Values.collector.serviceAccount.create }}
{{- default (include "cdpa.collectorName" .) .Values.collector.serviceAccount.name }}
{{- else }}
{{- required "collector.serviceAccount.name must name an existing ServiceAccount when collector.serviceAccount.create is false" .Values.collector.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The collector's OTLP/HTTP port (the OTLP/HTTP default). */}}
{{- define "cdpa.collectorPort" -}}
4318
{{- end }}

{{/* Where the collector keeps its SQLite database: the mount of its volume. */}}
{{- define "cdpa.collectorDataDir" -}}
/var/lib/calico-dataplane-agent
{{- end }}

{{/*
Where the agents push: report.endpoint, else the chart's collector when it is enabled, else ""
(no push). The Service's cluster DNS name; the agent uses ClusterFirstWithHostNet DNS.
*/}}
{{- define "cdpa.reportEndpoint" -}}
{{- if .Values.report.endpoint }}
{{- .Values.report.endpoint }}
{{- else if .Values.collector.enabled }}
{{- printf "http://%s.%s.svc:%s" (include "cdpa.collectorName" .) .Release.Namespace (include "cdpa.collectorPort" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the agent sends its projected ServiceAccount token: report.serviceAccountToken
`always`, or `auto` with the collector enabled (which authenticates agents by TokenReview).
*/}}
{{- define "cdpa.reportToken" -}}
{{- $mode := .Values.report.serviceAccountToken }}
{{- if and (include "cdpa.reportEndpoint" .) (or (eq $mode "always") (and (eq $mode "auto") .Values.collector.enabled)) }}true{{ end }}
{{- end }}

{{/* Where the agent reads its report token (a projected volume; the kubelet rotates it). */}}
{{- define "cdpa.reportTokenDir" -}}
/var/run/secrets/calico-dataplane-agent/report
{{- end }}

{{/* The agent's spool mount: the host path's (or emptyDir's) place in the container. */}}
{{- define "cdpa.spoolMount" -}}
/var/lib/calico-dataplane-agent
{{- end }}

{{/* The mount of the report CA bundle (report.ca). */}}
{{- define "cdpa.reportCaDir" -}}
/etc/calico-dataplane-agent/report-ca
{{- end }}

{{/*
Checks across values that values.schema.json cannot express, each failing with the fix.
Included once, from the DaemonSet.
*/}}
{{- define "cdpa.validate" -}}
{{- $r := .Values.report }}
{{- if and $r.ca.configMapName $r.ca.secretName }}
{{- fail "report.ca: set configMapName or secretName, not both (the CA bundle is mounted from one of them)" }}
{{- end }}
{{- if regexMatch "/v1/(logs|metrics)/?$" $r.endpoint }}
{{- fail (printf "report.endpoint %q: give the base URL without /v1/logs or /v1/metrics; the agent appends each signal's path" $r.endpoint) }}
{{- end }}
{{- if and .Values.collector.enabled (not $r.endpoint) (eq $r.serviceAccountToken "never") }}
{{- fail "report.serviceAccountToken is never but collector.enabled points the agents at the collector, which accepts only their ServiceAccount token (TokenReview): use auto" }}
{{- end }}
{{- if include "cdpa.reportToken" . }}
{{- range $r.headers }}
{{- if eq (lower .name) "authorization" }}
{{- fail "report.headers sets Authorization while the agent sends its ServiceAccount token as the bearer token (report.serviceAccountToken): drop one" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.collector.enabled (le (float64 .Values.collector.staleAfter) (float64 $r.interval)) }}
{{- fail (printf "collector.staleAfter (%v s) must be longer than report.interval (%v s), or every node would show as stale between two reports" .Values.collector.staleAfter $r.interval) }}
{{- end }}
{{- end }}
