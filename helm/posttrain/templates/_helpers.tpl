{{/* Labels on every object: the recommended app.kubernetes.io set plus commonLabels. */}}
{{- define "posttrain.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: posttrain
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The name of the Hub-token Secret pipeline pods read: created or referenced. */}}
{{- define "posttrain.hfTokenSecret" -}}
{{- $s := .Values.secrets.hfToken -}}
{{- if $s.create }}{{ $s.name }}{{ else }}{{ default $s.name $s.existingSecret }}{{ end -}}
{{- end }}

{{- define "posttrain.s3Secret" -}}
{{- $s := .Values.secrets.s3 -}}
{{- if $s.create }}{{ $s.name }}{{ else }}{{ default $s.name $s.existingSecret }}{{ end -}}
{{- end }}
