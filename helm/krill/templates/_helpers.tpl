{{- define "krill.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "krill.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "krill.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Render a settings table as TOML: scalars and lists as JSON literals. */}}
{{- define "krill.toml" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "krill.originURL" -}}
http://{{ include "krill.fullname" . }}-origin:{{ .Values.origin.port }}
{{- end -}}

{{- define "krill.trackerURL" -}}
http://{{ include "krill.fullname" . }}-tracker:{{ .Values.tracker.port }}
{{- end -}}
