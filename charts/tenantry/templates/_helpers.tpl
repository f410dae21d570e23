{{/* The name of every object of the release. */}}
{{- define "tenantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride }}
{{- else if eq .Release.Name "tenantry" -}}
tenantry
{{- else -}}
{{ .Release.Name }}-tenantry
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
