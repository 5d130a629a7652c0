{{/*
Chart name, overridable; truncated to 63 characters (the DNS label limit of resource names).
*/}}
{{- define "streaming-analytics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: <release>-<chart> unless the release name already contains the chart name.
Truncated to 63 characters. Component resources append a suffix (-push, -pipeline), so keep
release names short enough for that.
*/}}
{{- define "streaming-analytics.fullname" -}}
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

{{/*
<fullname>-<component>, truncated to 63. Usage: include "streaming-analytics.componentName" (list . "push")
*/}}
{{- define "streaming-analytics.componentName" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "streaming-analytics.fullname" $ctx | trunc 54 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "streaming-analytics.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the immutable subset (Deployment selectors never change after install).
*/}}
{{- define "streaming-analytics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streaming-analytics.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels: selector labels plus version, chart and manager.
*/}}
{{- define "streaming-analytics.labels" -}}
helm.sh/chart: {{ include "streaming-analytics.chart" . }}
{{ include "streaming-analytics.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streaming-analytics
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. Usage: include "streaming-analytics.componentSelectorLabels" (list . "push")
*/}}
{{- define "streaming-analytics.componentSelectorLabels" -}}
{{ include "streaming-analytics.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Labels of one component. Usage: include "streaming-analytics.componentLabels" (list . "push")
*/}}
{{- define "streaming-analytics.componentLabels" -}}
{{ include "streaming-analytics.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; the tag defaults to the appVersion
and a digest wins over the tag. Usage: include "streaming-analytics.image" (list .Values.image .)
*/}}
{{- define "streaming-analytics.image" -}}
{{- $image := index . 0 }}
{{- $ctx := index . 1 }}
{{- $repository := required "an image repository is required" $image.repository }}
{{- if $image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $image.registry) $repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default $ctx.Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret with SA_JWT_SECRET, SA_POSTGRES_DSN and SA_REDIS_URL.
*/}}
{{- define "streaming-analytics.secretName" -}}
{{- default (include "streaming-analytics.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
An env entry read from the platform Secret. Usage: include "streaming-analytics.secretEnv" (list . "SA_REDIS_URL")
*/}}
{{- define "streaming-analytics.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "streaming-analytics.secretName" (index . 0) }}
      key: {{ index . 1 }}
{{- end }}

{{/*
Env entries from a map of SA_* settings, skipping empty values (the code's default then applies).
Usage: include "streaming-analytics.envFromMap" .Values.push.env
*/}}
{{- define "streaming-analytics.envFromMap" -}}
{{- range $name, $value := . }}
{{- if ne (toString $value) "" }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
ServiceAccount names.
*/}}
{{- define "streaming-analytics.push.serviceAccountName" -}}
{{- if .Values.push.serviceAccount.create }}
{{- default (include "streaming-analytics.componentName" (list . "push")) .Values.push.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.push.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streaming-analytics.flink.serviceAccountName" -}}
{{- if .Values.pipeline.serviceAccount.create }}
{{- default (include "streaming-analytics.componentName" (list . "flink")) .Values.pipeline.serviceAccount.name }}
{{- else }}
{{- required "pipeline.serviceAccount.name is required when pipeline.serviceAccount.create is false" .Values.pipeline.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the FlinkDeployment (also the prefix of the pods and Services Flink creates).
Flink uses it as its cluster-id, which must be at most 45 characters.
*/}}
{{- define "streaming-analytics.flinkDeploymentName" -}}
{{- include "streaming-analytics.componentName" (list . "pipeline") | trunc 45 | trimSuffix "-" }}
{{- end }}

{{/*
Whether the push server terminates TLS itself.
*/}}
{{- define "streaming-analytics.push.scheme" -}}
{{- if .Values.push.tls.secretName }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/*
Egress rules to a backend {ports, to}: one rule, TCP on every port, to the peers (none: anywhere).
*/}}
{{- define "streaming-analytics.egressRule" -}}
- ports:
  {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
  {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Egress rule to the cluster DNS.
*/}}
{{- define "streaming-analytics.dnsEgressRule" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  {{- with .Values.backends.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
