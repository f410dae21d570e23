{{/*
The name of every object of the release, at most 63 characters (a DNS
label: Service names must be one) without a trailing "-".
*/}}
{{- define "tenantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if eq .Release.Name "tenantry" -}}
tenantry
{{- else -}}
{{ printf "%s-tenantry" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end -}}

{{/*
The full name with a suffix (e.g. "-events"), still at most 63 characters:
the full name is cut, never the suffix, so two suffixed names of a long
release never collide.
*/}}
{{- define "tenantry.suffixedName" -}}
{{- $full := include "tenantry.fullname" .ctx -}}
{{- printf "%s%s" ($full | trunc (int (sub 63 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "tenantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "tenantry.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* Where the Events about Tenants go (and their Role lives). */}}
{{- define "tenantry.eventNamespace" -}}
{{ default .Release.Namespace .Values.eventNamespace }}
{{- end -}}

{{/* The operator image: `repository@digest` when a digest is set. */}}
{{- define "tenantry.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: tenantry
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tenantry.labels" -}}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: tenantry-{{ .Chart.Version }}
{{- end -}}
