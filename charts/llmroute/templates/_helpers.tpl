{{/* The chart name, overridable. */}}
{{- define "llmroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object this chart creates. */}}
{{- define "llmroute.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "llmroute.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "llmroute.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "llmroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llmroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmroute
{{- end }}

{{- define "llmroute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmroute.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmroute.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "llmroute.sidecarImage" -}}
{{- $repo := .Values.injection.sidecar.image.repository | default .Values.image.repository }}
{{- $tag := .Values.injection.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* The Secret holding the operator's serving certificate (webhook and, optionally, gRPC). */}}
{{- define "llmroute.tlsSecretName" -}}
{{- printf "%s-tls" (include "llmroute.fullname" .) }}
{{- end }}

{{/* True when the operator needs a serving certificate. */}}
{{- define "llmroute.tlsNeeded" -}}
{{- if or .Values.injection.enabled .Values.controlPlane.tls.enabled }}true{{ end }}
{{- end }}

{{/* DNS names of the operator's Services (the ClusterIP one and the headless one), the SANs of its certificate. */}}
{{- define "llmroute.serviceDNSNames" -}}
{{- $names := list }}
{{- range $svc := list (include "llmroute.fullname" .) (include "llmroute.replicasService" .) }}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $.Release.Namespace) (printf "%s.%s.svc" $svc $.Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc $.Release.Namespace)) }}
{{- end }}
{{- $names | toJson }}
{{- end }}

{{/* The headless Service: its name resolves to every ready operator replica. */}}
{{- define "llmroute.replicasService" -}}
{{- printf "%s-replicas" (include "llmroute.fullname" .) }}
{{- end }}

{{/* host:port of the operator replicas' gRPC endpoints, as sidecars dial them (the headless name: all replicas). */}}
{{- define "llmroute.controlPlaneAddress" -}}
{{- printf "%s.%s.svc:%d" (include "llmroute.replicasService" .) .Release.Namespace (int .Values.service.grpcPort) }}
{{- end }}

{{/*
The Helm-generated CA and serving certificate as YAML {ca, cert, key}, base64-encoded. An existing
Secret is reused (`lookup`), so upgrades keep the certificate the API server already trusts.
*/}}
{{- define "llmroute.generatedTLS" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "llmroute.tlsSecretName" .) }}
{{- if and $existing $existing.data (index $existing.data "ca.crt") }}
ca: {{ index $existing.data "ca.crt" }}
cert: {{ index $existing.data "tls.crt" }}
key: {{ index $existing.data "tls.key" }}
{{- else }}
{{- $days := int .Values.injection.tls.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "llmroute.fullname" .)) $days }}
{{- $names := include "llmroute.serviceDNSNames" . | fromJsonArray }}
{{- $cert := genSignedCert (index $names 2) nil $names $days $ca }}
ca: {{ $ca.Cert | b64enc }}
cert: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- end }}
{{- end }}
