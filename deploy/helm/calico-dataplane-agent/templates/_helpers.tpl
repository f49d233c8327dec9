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

{{/* The label matcher of the agent's scrape job, for the alerts. */}}
{{- define "cdpa.jobMatcher" -}}
job=~"{{ include "cdpa.fullname" . }}.*"
{{- end }}
