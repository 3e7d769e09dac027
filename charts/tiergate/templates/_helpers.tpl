{{/*
Helpers. The public templates (tiergate.sidecar, tiergate.sidecarVolumes, tiergate.opa,
tiergate.sidecarPodLabels) are included from YOUR chart, which has tiergate as a dependency: there
`.Values` is your chart's values and tiergate's are under `.Values.tiergate`. Every helper
therefore works on a dict {"v": <tiergate values>, "root": <the including chart's context>}.
*/}}

{{- define "tiergate.fullname" -}}
{{- $v := .v -}}
{{- if $v.fullnameOverride -}}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "tiergate" $v.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tiergate.name" -}}
{{- default "tiergate" .v.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tiergate.labels" -}}
helm.sh/chart: {{ printf "tiergate-%s" .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tiergate.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .v.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tiergate.daemonSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tiergate.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: sync-daemon
{{- end -}}

{{- define "tiergate.authzGatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "tiergate.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: authz-gateway
{{- end -}}

{{- define "tiergate.serviceAccountName" -}}
{{- if .v.serviceAccount.create -}}
{{- default (include "tiergate.fullname" .) .v.serviceAccount.name -}}
{{- else -}}
{{- default "default" .v.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The NetworkPolicy peers that may scrape /metrics, as a YAML list (empty: none): the monitoring
stack's namespace and pods while a ServiceMonitor/PodMonitor is rendered ("monitored"), and
networkPolicy.metricsFrom always. Called with (dict "v" <values> "monitored" <bool>). */}}
{{- define "tiergate.metricsPeers" -}}
{{- $np := .v.networkPolicy -}}
{{- $peers := list -}}
{{- if .monitored -}}
{{- $peers = append $peers (dict "namespaceSelector" $np.monitoring.namespaceSelector "podSelector" $np.monitoring.podSelector) -}}
{{- end -}}
{{- $peers = concat $peers ($np.metricsFrom | default list) -}}
{{- toYaml $peers -}}
{{- end -}}

{{- define "tiergate.image" -}}
{{- printf "%s:%s" .v.image.repository (required "tiergate: set image.tag" .v.image.tag | toString) -}}
{{- end -}}

{{- define "tiergate.secretName" -}}
{{- default (include "tiergate.fullname" .) .v.secrets.existingSecret -}}
{{- end -}}

{{- define "tiergate.plansConfigMap" -}}
{{- default (printf "%s-plans" (include "tiergate.fullname" .)) .v.catalog.existingPlansConfigMap -}}
{{- end -}}

{{- define "tiergate.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "tiergate.fullname" .)) .v.catalog.existingPoliciesConfigMap -}}
{{- end -}}

{{/* "true" when this release runs the sync daemon, else empty. daemon.enabled true or false is
obeyed; null (the default) is "auto": on when the chart is installed on its own, off when it is a
dependency of another chart (its templates render under that chart's charts/, or the sidecar
templates are included from the app chart's own templates). Called with $c. */}}
{{- define "tiergate.daemonEnabled" -}}
{{- $e := .v.daemon.enabled -}}
{{- if kindIs "bool" $e -}}
{{- if $e }}true{{ end -}}
{{- else if and (eq .root.Chart.Name "tiergate") (not (contains "/charts/" .root.Template.BasePath)) -}}
true
{{- end -}}
{{- end -}}

{{- define "tiergate.daemonUrl" -}}
{{- if .v.sidecar.daemonUrl -}}
{{- .v.sidecar.daemonUrl -}}
{{- else if include "tiergate.daemonEnabled" . -}}
{{- printf "http://%s.%s.svc:%v" (include "tiergate.fullname" .) .root.Release.Namespace (int .v.daemon.service.port) -}}
{{- else -}}
{{- fail "tiergate: set sidecar.daemonUrl (the sync daemon's URL): this release runs no daemon (daemon.enabled false, or a dependency of another chart; see the chart README)" -}}
{{- end -}}
{{- end -}}

{{/*
A `settings` map as env entries: key `reconcile_interval_s` -> TIERGATE_RECONCILE_INTERVAL_S.
Numbers go through toJson so 1048576 stays 1048576 (not 1.048576e+06).
*/}}
{{- define "tiergate.settingsEnv" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}{{/* null: leave the setting unset (its default) */}}
- name: {{ printf "TIERGATE_%s" (upper $key) }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value | toJson | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuse a short token or secret before anything is installed, as the processes would at start:
each comma-separated token on its own (empty entries skipped), never echoing the value.
  include "tiergate.checkSecret" (dict "name" "secrets.feedToken" "value" .Values.secrets.feedToken "list" true) */}}
{{- define "tiergate.checkSecret" -}}
{{- $parts := ternary (splitList "," (.value | default "")) (list (.value | default "")) (.list | default false) -}}
{{- $n := len $parts -}}
{{- range $i, $part := $parts }}
{{- $t := trim $part }}
{{- if and $t (lt (len $t) 16) }}
{{- fail (printf "tiergate: %s: %s has %d characters; each needs at least 16 (e.g. `openssl rand -hex 32`)" $.name (ternary (printf "token %d of %d" (add1 $i) $n) "the value" (gt $n 1)) (len $t)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The sidecar's probe handler for PATH: httpGet on the diagnostics listener (health, readiness
and metrics on the pod IP), or, with sidecar.diagnosticsPort 0, `tiergate healthcheck` on loopback. */}}
{{- define "tiergate.sidecarProbe" -}}
{{- if .s.diagnosticsPort -}}
httpGet:
  path: {{ .path }}
  port: {{ .s.diagnosticsPort }}
{{- else -}}
exec:
  command:
    - tiergate
    - healthcheck
    {{- if eq .path "/readyz" }}
    - --ready
    {{- end }}
    - --url
    - {{ printf "http://127.0.0.1:%v" (int .s.port) | quote }}
    - --timeout
    - {{ .timeout | toString | quote }}
{{- end -}}
{{- end -}}

{{/* ============================ public templates ============================ */}}

{{/*
Labels for your pod template: the NetworkPolicy admits pods carrying them to the daemon's feed.
  metadata:
    labels:
      {{- include "tiergate.sidecarPodLabels" . | nindent 8 }}
*/}}
{{- define "tiergate.sidecarPodLabels" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $c := dict "v" $v "root" . -}}
{{- toYaml $v.sidecarPodLabels -}}
{{- end -}}

{{/* TIERGATE_LICENSE_PUBLIC_KEYS: each of license.publicKeys (keys of the Secret) as a path in
its mounted directory, comma-separated. Called with the license values. */}}
{{- define "tiergate.licensePublicKeys" -}}
{{- $paths := list -}}
{{- range (required "tiergate: license.publicKeys must name at least one key of the license Secret" .publicKeys) }}
{{- $paths = append $paths (printf "/etc/tiergate/license/%s" .) -}}
{{- end -}}
{{- join "," $paths -}}
{{- end -}}

{{/* The outbox's volume source from sidecar.outboxVolume: Helm merges a user's source into the
default emptyDir, so a source of another kind replaces it (rather than rendering two). */}}
{{- define "tiergate.outboxVolumeSource" -}}
{{- $volume := . | default dict -}}
{{- $other := omit $volume "emptyDir" -}}
{{- if $other }}{{ toYaml $other }}{{ else if $volume }}{{ toYaml $volume }}{{ end -}}
{{- end -}}

{{/* The outbox's synchronous mode for its volume: "normal" on one that dies with the pod (emptyDir,
ephemeral), else "full" (the binary's default), also for a volume you add yourself (null). */}}
{{- define "tiergate.outboxSync" -}}
{{- $source := include "tiergate.outboxVolumeSource" . | fromYaml -}}
{{- if or (hasKey $source "emptyDir") (hasKey $source "ephemeral") }}normal{{ else }}full{{ end -}}
{{- end -}}

{{/*
The sidecar container as one list item. Prefer tiergate.initContainers and tiergate.containers,
which put it where sidecar.native says; with sidecar.native it carries `restartPolicy: Always`
and a startup probe, and belongs in `initContainers:`.
  containers:
    - name: app
      ...
    {{- include "tiergate.sidecar" . | nindent 8 }}
*/}}
{{- define "tiergate.sidecar" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $c := dict "v" $v "root" . -}}
{{- $s := $v.sidecar -}}
- name: tiergate
  image: {{ include "tiergate.image" $c | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["sidecar"]
  env:
    - name: TIERGATE_SIDECAR_HOST
      value: "127.0.0.1"
    - name: TIERGATE_SIDECAR_PORT
      value: {{ $s.port | toJson | quote }}
    - name: TIERGATE_REPLICA_PATH
      value: /var/lib/tiergate/replica.db
    - name: TIERGATE_OUTBOX_PATH
      value: /var/lib/tiergate/outbox/outbox.db
    {{- if not (hasKey ($s.settings | default dict) "outbox_sync") }}
    # The outbox's fsync follows its volume (docs/adr/0022): an emptyDir or ephemeral volume dies
    # with the pod, so FULL would only cover a power cut the pod survives in place; a volume of
    # your own (a PVC, `{}`) keeps FULL. sidecar.settings.outbox_sync overrides it.
    - name: TIERGATE_OUTBOX_SYNC
      value: {{ include "tiergate.outboxSync" $s.outboxVolume | quote }}
    {{- end }}
    - name: TIERGATE_PLANS
      value: /etc/tiergate/plans/plans.yaml
    - name: TIERGATE_POLICIES
      value: /etc/tiergate/policies
    - name: TIERGATE_ENGINE
      value: {{ $v.engine | quote }}
    {{- if eq $v.engine "opa" }}
    - name: TIERGATE_OPA_URL
      value: {{ printf "http://127.0.0.1:%v" (int $v.opa.port) | quote }}
    {{- end }}
    {{- $license := $v.license | default dict }}
    {{- if $license.secretName }}
    # a signed license from the Secret license.secretName is the replica's source: no daemon
    - name: TIERGATE_LICENSE_PATH
      value: {{ printf "/etc/tiergate/license/%s" $license.licenseKey | quote }}
    - name: TIERGATE_LICENSE_PUBLIC_KEYS
      value: {{ include "tiergate.licensePublicKeys" $license | quote }}
    {{- else }}
    - name: TIERGATE_DAEMON_URL
      value: {{ include "tiergate.daemonUrl" $c | quote }}
    - name: TIERGATE_FEED_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "tiergate.secretName" $c }}
          key: {{ $v.secrets.keys.feedToken }}
    {{- end }}
    - name: TIERGATE_JWT_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ include "tiergate.secretName" $c }}
          key: {{ $v.secrets.keys.jwtSecret }}
          optional: true
    {{- if $s.diagnosticsPort }}
    # health, readiness and metrics only, on the pod IP: for the kubelet's probes and Prometheus
    - name: TIERGATE_DIAGNOSTICS_HOST
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: TIERGATE_DIAGNOSTICS_PORT
      value: {{ $s.diagnosticsPort | toJson | quote }}
    {{- end }}
    {{- with $s.settings }}
    {{- include "tiergate.settingsEnv" . | nindent 4 }}
    {{- end }}
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: tiergate-state
      mountPath: /var/lib/tiergate
    - name: tiergate-outbox
      mountPath: /var/lib/tiergate/outbox
    - name: tiergate-tmp
      mountPath: /tmp
    - name: tiergate-plans
      mountPath: /etc/tiergate/plans
      readOnly: true
    - name: tiergate-policies
      mountPath: /etc/tiergate/policies
      readOnly: true
    {{- if ($v.license | default dict).secretName }}
    - name: tiergate-license
      mountPath: /etc/tiergate/license
      readOnly: true
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $ports := list -}}
  {{- if $s.diagnosticsPort }}
  {{- $ports = append $ports (dict "name" "tg-diagnostics" "containerPort" (int $s.diagnosticsPort)) -}}
  {{- end }}
  {{- if hasKey . "tiergateExtraPorts" }}{{ $ports = concat $ports .tiergateExtraPorts }}{{ end }}
  {{- with $ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $s.native }}
  # a native sidecar (an init container that keeps running): the app's containers start once
  # this startup probe passes, so the app never calls a sidecar without a replica
  restartPolicy: Always
  startupProbe:
    {{- include "tiergate.sidecarProbe" (dict "s" $s "path" "/readyz" "timeout" $s.startupProbe.timeoutSeconds) | nindent 4 }}
    {{- toYaml $s.startupProbe | nindent 4 }}
  {{- end }}
  livenessProbe:
    {{- include "tiergate.sidecarProbe" (dict "s" $s "path" "/healthz" "timeout" $s.livenessProbe.timeoutSeconds) | nindent 4 }}
    {{- toYaml $s.livenessProbe | nindent 4 }}
  readinessProbe:
    {{- include "tiergate.sidecarProbe" (dict "s" $s "path" "/readyz" "timeout" $s.readinessProbe.timeoutSeconds) | nindent 4 }}
    {{- toYaml $s.readinessProbe | nindent 4 }}
  resources:
    {{- toYaml $s.resources | nindent 4 }}
  securityContext:
    {{- toYaml $s.securityContext | nindent 4 }}
{{- end -}}

{{/*
The sidecar's volumes, as list items for your pod spec's `volumes:`: the replica on an emptyDir
(a cache: re-downloaded from the daemon when lost), the usage outbox (sidecar.outboxVolume, an
emptyDir by default: it survives container restarts, not the pod's deletion; another volume source
replaces it, and null leaves the `tiergate-outbox` volume to you, e.g. a StatefulSet
volumeClaimTemplate), a /tmp emptyDir
(read-only root filesystem), the catalog and policies ConfigMaps as directories (no subPath:
subPath mounts never see ConfigMap updates, which would defeat hot reload), and with
license.secretName the license Secret as a directory (a renewal reaches the sidecar the same way).
  volumes:
    {{- include "tiergate.sidecarVolumes" . | nindent 8 }}
*/}}
{{- define "tiergate.sidecarVolumes" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $c := dict "v" $v "root" . -}}
- name: tiergate-state
  emptyDir:
    sizeLimit: {{ $c.v.sidecar.replicaSizeLimit }}
{{- with include "tiergate.outboxVolumeSource" $c.v.sidecar.outboxVolume }}
- name: tiergate-outbox
  {{- . | nindent 2 }}
{{- end }}
- name: tiergate-tmp
  emptyDir:
    sizeLimit: 64Mi
- name: tiergate-plans
  configMap:
    name: {{ include "tiergate.plansConfigMap" $c }}
- name: tiergate-policies
  configMap:
    name: {{ include "tiergate.policiesConfigMap" $c }}
{{- with ($v.license | default dict).secretName }}
- name: tiergate-license
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/*
The OPA server for engine: opa (renders nothing otherwise). With opa.nativeSidecar (default) it is
a native sidecar for `initContainers:` (Kubernetes >= 1.29): its startupProbe passes before the
tiergate sidecar starts, so the first policy push finds it up.
  {{- with include "tiergate.opa" . }}
  initContainers:
    {{- . | nindent 8 }}
  {{- end }}
*/}}
{{- define "tiergate.opa" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $c := dict "v" $v "root" . -}}
{{- if eq $v.engine "opa" -}}
{{- $o := $v.opa -}}
- name: opa
  image: {{ printf "%s:%s" $o.image.repository ($o.image.tag | toString) | quote }}
  imagePullPolicy: {{ $o.image.pullPolicy }}
  {{- if $o.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --server
    - --disable-telemetry
    - {{ printf "--addr=127.0.0.1:%v" (int $o.port) | quote }}
    - {{ printf "--diagnostic-addr=0.0.0.0:%v" (int $o.diagnosticPort) | quote }}
    - {{ printf "--log-level=%s" $o.logLevel | quote }}
  ports:
    - name: opa-diag
      containerPort: {{ $o.diagnosticPort }}
  startupProbe:
    httpGet: {path: /health, port: opa-diag}
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /health, port: opa-diag}
    periodSeconds: 15
  readinessProbe:
    httpGet: {path: /health, port: opa-diag}
    periodSeconds: 10
  resources:
    {{- toYaml $o.resources | nindent 4 }}
  securityContext:
    {{- toYaml $o.securityContext | nindent 4 }}
{{- end -}}
{{- end -}}


{{/*
Everything tiergate puts in your pod's `initContainers:`: the OPA server (engine: opa, as a native
sidecar) and, with sidecar.native, the tiergate sidecar itself (Kubernetes >= 1.29): the kubelet
starts your app's containers only once its startup probe (/readyz) passes. Empty otherwise.
  {{- with include "tiergate.initContainers" . }}
  initContainers:
    {{- . | nindent 8 }}
  {{- end }}
*/}}
{{- define "tiergate.initContainers" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $items := list -}}
{{- with include "tiergate.opa" . }}{{ if $v.opa.nativeSidecar }}{{ $items = append $items . }}{{ end }}{{ end -}}
{{- if $v.sidecar.native }}{{ $items = append $items (include "tiergate.sidecar" .) }}{{ end -}}
{{- join "\n" $items -}}
{{- end -}}

{{/*
Everything tiergate puts in your pod's `containers:` after your app: the tiergate sidecar unless
sidecar.native (then it is in tiergate.initContainers), and the OPA server when engine: opa with
opa.nativeSidecar false.
  containers:
    - name: app
      ...
    {{- include "tiergate.containers" . | nindent 8 }}
*/}}
{{- define "tiergate.containers" -}}
{{- $v := .Values -}}
{{- if and (ne .Chart.Name "tiergate") (hasKey .Values "tiergate") }}{{ $v = .Values.tiergate }}{{ end -}}
{{- $items := list -}}
{{- if not $v.sidecar.native }}{{ $items = append $items (include "tiergate.sidecar" .) }}{{ end -}}
{{- with include "tiergate.opa" . }}{{ if not $v.opa.nativeSidecar }}{{ $items = append $items . }}{{ end }}{{ end -}}
{{- join "\n" $items -}}
{{- end -}}
