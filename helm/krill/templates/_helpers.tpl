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
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component's objects: call with (dict "ctx" $ "component" "origin"). */}}
{{- define "krill.componentLabels" -}}
{{ include "krill.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The selector of one component's pods: call with (dict "ctx" $ "component" "origin"). */}}
{{- define "krill.selector" -}}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
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
{{ ternary "https" "http" (ne .Values.security.tls.secretName "") }}://{{ include "krill.fullname" . }}-origin:{{ .Values.origin.port }}
{{- end -}}

{{- define "krill.trackerURL" -}}
{{ ternary "https" "http" (include "krill.trackerTLS" . | eq "true") }}://{{ include "krill.fullname" . }}-tracker:{{ .Values.tracker.port }}
{{- end -}}

{{/* Whether the tracker serves https (security.tls.secretName and .tracker). */}}
{{- define "krill.trackerTLS" -}}
{{ and (ne .Values.security.tls.secretName "") .Values.security.tls.tracker }}
{{- end -}}

{{/* Secret volumes and their mounts (docs/security.md): .ctx, .secrets (a list of
     [volume name, Secret name, mount path] or [..., keys] for the Secrets that are
     set). With keys, only those files are mounted: a node gets the CA, not the
     servers' private key, and its own credentials, not the tracker's. */}}
{{- define "krill.secretMounts" -}}
{{- range .secrets }}{{ if index . 1 }}
- {name: {{ index . 0 }}, mountPath: {{ index . 2 }}, readOnly: true}
{{- end }}{{ end }}
{{- end -}}
{{- define "krill.secretVolumes" -}}
{{- range .secrets }}{{ if index . 1 }}
- name: {{ index . 0 }}
  secret:
    secretName: {{ index . 1 }}
    {{- if gt (len .) 3 }}
    items:
      {{- range index . 3 }}
      - {key: {{ . }}, path: {{ . }}}
      {{- end }}
    {{- end }}
{{- end }}{{ end }}
{{- end -}}

{{/* The security context of the origin's and tracker's containers: the image's
     non-root user, nothing writable but the volumes, no privileges. */}}
{{- define "krill.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The agent's containers: root, for containerd's hosts.toml directory and
     the cache on the node (both root's), but without any capability. */}}
{{- define "krill.agentContainer" -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The log format every service reads from its environment (krill.logs). */}}
{{- define "krill.logFormatEnv" -}}
- name: KRILL_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/* Probes at the named port: startup and liveness on GET /health (the process
     serves HTTP), readiness on GET /ready (what the service depends on answers:
     503 with the failing check named in its JSON body). Each readiness check has
     2 s, so the 5 s timeout holds a slow dependency's "timeout" answer.
     Call with (dict "port" "registry" "startupSeconds" 150). */}}
{{- define "krill.probes" -}}
{{- $host := ternary (printf ", host: %s" .host) "" (hasKey . "host") -}}
{{- $host = printf "%s%s" $host (ternary ", scheme: HTTPS" "" (and (hasKey . "https") .https)) -}}
startupProbe:
  httpGet: {path: /health, port: {{ .port }}{{ $host }}}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ div .startupSeconds 5 }}
livenessProbe:
  httpGet: {path: /health, port: {{ .port }}{{ $host }}}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /ready, port: {{ .port }}{{ $host }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
