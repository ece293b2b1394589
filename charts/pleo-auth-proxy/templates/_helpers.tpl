{{/*
Named templates of the pleo-auth-proxy chart.

Public, for your own charts (pass this chart's context: `index .Subcharts "pleo-auth-proxy"`):
  pleo-auth-proxy.initContainers  the container as a native sidecar, when sidecar.native
                                  resolves to native (else nothing): items of initContainers
  pleo-auth-proxy.containers      the container as a classic sidecar, when it does not (else
                                  nothing): items of containers
  pleo-auth-proxy.nativeSidecar   the container as a native sidecar (restartPolicy: Always),
                                  whatever sidecar.native says: one item of initContainers
  pleo-auth-proxy.classicSidecar  the container as a classic sidecar, whatever sidecar.native
                                  says: one item of containers
  pleo-auth-proxy.sidecar         the container in the form sidecar.native resolves to
  pleo-auth-proxy.isNative        "true" when sidecar.native resolves to native, else ""
  pleo-auth-proxy.sidecarVolumes  its volumes, as items of a volumes list (may be empty)
  pleo-auth-proxy.url             http://127.0.0.1:<port>, for your container's environment
Everything else here is internal.
*/}}

{{- define "pleo-auth-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pleo-auth-proxy.fullname" -}}
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

{{- define "pleo-auth-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pleo-auth-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pleo-auth-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pleo-auth-proxy.labels" -}}
helm.sh/chart: {{ include "pleo-auth-proxy.chart" . }}
{{ include "pleo-auth-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pleo-auth-proxy
{{- end }}

{{- define "pleo-auth-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pleo-auth-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pleo-auth-proxy.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The URL your containers send requests to, in sidecar mode. */}}
{{- define "pleo-auth-proxy.url" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.ports.data) }}
{{- end }}

{{/* Where secrets and the file store are mounted. */}}
{{- define "pleo-auth-proxy.secretsDir" -}}/etc/pleo-auth-proxy/secrets{{- end }}
{{- define "pleo-auth-proxy.dataDir" -}}/var/lib/pleo-auth-proxy{{- end }}

{{/* The Secret the chart creates, or the one you manage. */}}
{{- define "pleo-auth-proxy.secretName" -}}
{{- default (include "pleo-auth-proxy.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
pleo-auth-proxy.secretFiles: the secrets that are configured, as a YAML list of
{key (in the Secret), file (under the secrets dir), env (the _FILE variable)}.
*/}}
{{- define "pleo-auth-proxy.secretFiles" -}}
{{- $s := .Values.secrets }}
{{- $existingKeys := $s.existingSecretKeys | default dict }}
{{- $defs := list
  (dict "value" "oauthClientSecret" "file" "oauth-client-secret" "env" "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE")
  (dict "value" "encryptionKey" "file" "encryption-key" "env" "PLEO_PROXY_ENCRYPTION_KEY_FILE")
  (dict "value" "adminToken" "file" "admin-token" "env" "PLEO_PROXY_ADMIN_TOKEN_FILE")
  (dict "value" "connectKey" "file" "connect-key" "env" "PLEO_PROXY_CONNECT_KEY_FILE")
  (dict "value" "clientTokens" "file" "client-tokens" "env" "PLEO_PROXY_CLIENT_TOKENS_FILE") }}
{{- $out := list }}
{{- range $defs }}
{{- if $s.existingSecret }}
{{- $key := get $existingKeys .value }}
{{- if $key }}
{{- $out = append $out (dict "name" .value "key" $key "file" .file "env" .env) }}
{{- end }}
{{- else if get $s .value }}
{{- $out = append $out (dict "name" .value "key" .file "file" .file "env" .env) }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* "true" when the secret named by .name (oauthClientSecret, ...) is configured. */}}
{{- define "pleo-auth-proxy.hasSecret" -}}
{{- range (include "pleo-auth-proxy.secretFiles" .root | fromYamlArray) }}
{{- if eq .name $.name }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when the chart creates its own Secret. */}}
{{- define "pleo-auth-proxy.createSecret" -}}
{{- if not .Values.secrets.existingSecret }}
{{- $files := include "pleo-auth-proxy.secretFiles" . | fromYamlArray }}
{{- $dsn := and (eq .Values.store.type "postgres") .Values.store.postgres.dsn (not .Values.store.postgres.existingSecret) }}
{{- if or $files $dsn }}true{{ end }}
{{- end }}
{{- end }}

{{/*
pleo-auth-proxy.validate fails the render on a configuration that cannot work. Every template
that renders something includes it, so a parent chart that uses the sidecar template gets the
same checks.
*/}}
{{- define "pleo-auth-proxy.validate" -}}
{{- $v := .Values }}
{{- $s := $v.secrets }}
{{- if $s.existingSecret }}
{{- if or $s.oauthClientSecret $s.encryptionKey $s.adminToken $s.clientTokens $s.connectKey }}
{{- fail "secrets.existingSecret is set: leave secrets.oauthClientSecret, encryptionKey, adminToken, clientTokens and connectKey empty and name the keys in secrets.existingSecretKeys" }}
{{- end }}
{{- else }}
{{- range $k, $key := ($s.existingSecretKeys | default dict) }}
{{- if $key }}
{{- fail (printf "secrets.existingSecretKeys.%s is set but secrets.existingSecret is empty" $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.standalone.enabled }}
{{- if not (include "pleo-auth-proxy.hasSecret" (dict "root" . "name" "clientTokens")) }}
{{- fail (printf "standalone.enabled: the data listener listens on 0.0.0.0:%d, so callers must present a client token; set secrets.clientTokens (or secrets.existingSecret with secrets.existingSecretKeys.clientTokens)" (int $v.ports.data)) }}
{{- end }}
{{- if and (eq $v.store.type "file") (gt (int $v.standalone.replicaCount) 1) }}
{{- fail "standalone.replicaCount > 1 needs store.type: postgres; the file store serves one replica" }}
{{- end }}
{{- end }}
{{- if eq $v.store.type "postgres" }}
{{- $p := $v.store.postgres }}
{{- if and $p.existingSecret $p.dsn }}
{{- fail "store.postgres: set existingSecret or dsn, not both" }}
{{- end }}
{{- if not (or $p.existingSecret $p.dsn) }}
{{- fail "store.type is postgres: set store.postgres.existingSecret (and existingSecretKey) or store.postgres.dsn" }}
{{- end }}
{{- if and $p.existingSecret (not $p.existingSecretKey) }}
{{- fail "store.postgres.existingSecretKey is empty" }}
{{- end }}
{{- else if eq $v.store.file.volume "secret" }}
{{- if not $v.store.file.secret.secretName }}
{{- fail "store.file.volume is secret: set store.file.secret.secretName" }}
{{- end }}
{{- end }}
{{- if $v.connect.enabled }}
{{- range $k := list "oauthClientID" "oauthScopes" "oauthRedirectURL" }}
{{- if not (get $v.config $k) }}
{{- fail (printf "connect.enabled: the consent flow needs config.%s" $k) }}
{{- end }}
{{- end }}
{{- if not (include "pleo-auth-proxy.hasSecret" (dict "root" . "name" "oauthClientSecret")) }}
{{- fail "connect.enabled: the consent flow needs the OAuth client secret: set secrets.oauthClientSecret (or secrets.existingSecretKeys.oauthClientSecret)" }}
{{- end }}
{{- $linkKey := or (include "pleo-auth-proxy.hasSecret" (dict "root" . "name" "connectKey")) (include "pleo-auth-proxy.hasSecret" (dict "root" . "name" "encryptionKey")) }}
{{- if not (or $linkKey $v.connect.unsignedLinks) }}
{{- fail "connect.enabled: connect links are signed with PLEO_PROXY_CONNECT_KEY: set secrets.connectKey (or secrets.existingSecretKeys.connectKey), or secrets.encryptionKey to derive it from; connect.unsignedLinks=true only behind an ingress that authorises /connect itself" }}
{{- end }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (not $v.standalone.enabled) }}
{{- fail "serviceMonitor.enabled needs standalone.enabled (it selects the chart's Service); in sidecar mode use podMonitor with podMonitor.selector" }}
{{- end }}
{{- if and $v.podMonitor.enabled (not $v.standalone.enabled) (not $v.podMonitor.selector) }}
{{- fail "podMonitor.enabled in sidecar mode: set podMonitor.selector to the labels of your pods" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.standalone.enabled) }}
{{- fail "networkPolicy.enabled needs standalone.enabled: in sidecar mode a policy would select your whole pod; write your pod's policy yourself (README.md lists what the sidecar needs)" }}
{{- end }}
{{- end }}

{{/*
The container's environment: dict "root" (the chart's context) "native" (bool: rendered as a
native sidecar).
*/}}
{{- define "pleo-auth-proxy.env" -}}
{{- $native := .native }}
{{- with .root }}
{{- $v := .Values }}
{{- $listen := printf "127.0.0.1:%d" (int $v.ports.data) }}
{{- if $v.standalone.enabled }}
{{- $listen = printf "0.0.0.0:%d" (int $v.ports.data) }}
{{- end }}
- name: PLEO_PROXY_LISTEN_ADDR
  value: {{ $listen | quote }}
- name: PLEO_PROXY_ADMIN_ADDR
  value: {{ printf ":%d" (int $v.ports.admin) | quote }}
{{- if $v.connect.enabled }}
- name: PLEO_PROXY_CONNECT_ADDR
  value: {{ printf ":%d" (int $v.ports.connect) | quote }}
{{- if $v.connect.unsignedLinks }}
- name: PLEO_PROXY_CONNECT_UNSIGNED_LINKS
  value: "true"
{{- end }}
{{- end }}
{{- $vars := list
  (list "ENVIRONMENT" $v.config.environment)
  (list "UPSTREAM_URL" $v.config.upstreamURL)
  (list "OAUTH_CLIENT_ID" $v.config.oauthClientID)
  (list "OAUTH_TOKEN_URL" $v.config.oauthTokenURL)
  (list "OAUTH_AUTHORIZE_URL" $v.config.oauthAuthorizeURL)
  (list "OAUTH_SCOPES" $v.config.oauthScopes)
  (list "OAUTH_REDIRECT_URL" $v.config.oauthRedirectURL)
  (list "DEFAULT_COMPANY_ID" $v.config.defaultCompanyID)
  (list "COMPANY_HEADER" $v.config.companyHeader)
  (list "TENANT_HEADER" $v.config.tenantHeader)
  (list "REFRESH_BEFORE" $v.config.refreshBefore)
  (list "KEEPALIVE_INTERVAL" $v.config.keepaliveInterval)
  (list "UPSTREAM_TIMEOUT" $v.config.upstreamTimeout)
  (list "MEMORY_LIMIT" $v.config.memoryLimit)
  (list "LOG_FORMAT" $v.config.logFormat)
  (list "LOG_LEVEL" $v.config.logLevel) }}
{{- range $vars }}
{{- if index . 1 }}
- name: PLEO_PROXY_{{ index . 0 }}
  value: {{ index . 1 | toString | quote }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.maxReplayBytes) }}
- name: PLEO_PROXY_MAX_REPLAY_BYTES
  value: {{ int64 $v.config.maxReplayBytes | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.upstreamMaxConns) }}
- name: PLEO_PROXY_UPSTREAM_MAX_CONNS
  value: {{ int64 $v.config.upstreamMaxConns | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.maxClientConns) }}
- name: PLEO_PROXY_MAX_CLIENT_CONNS
  value: {{ int64 $v.config.maxClientConns | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.config.cacheSize) }}
- name: PLEO_PROXY_CACHE_SIZE
  value: {{ int64 $v.config.cacheSize | toString | quote }}
{{- end }}
{{- if eq $v.store.type "postgres" }}
- name: PLEO_PROXY_STORE
  valueFrom:
    secretKeyRef:
      {{- if $v.store.postgres.existingSecret }}
      name: {{ $v.store.postgres.existingSecret }}
      key: {{ $v.store.postgres.existingSecretKey }}
      {{- else }}
      name: {{ include "pleo-auth-proxy.fullname" . }}
      key: postgres-dsn
      {{- end }}
{{- else }}
- name: PLEO_PROXY_STORE
  value: {{ printf "file://%s/credentials.json" (include "pleo-auth-proxy.dataDir" .) | quote }}
{{- end }}
{{- range (include "pleo-auth-proxy.secretFiles" . | fromYamlArray) }}
- name: {{ .env }}
  value: {{ printf "%s/%s" (include "pleo-auth-proxy.secretsDir" $) .file | quote }}
{{- end }}
{{- /* The shutdown delay: Kubernetes signals a classic sidecar (and a standalone pod, still in
  its Service's endpoints for a moment) at the same time as the app, so it keeps serving a
  while; a native sidecar is signalled only after the app's containers have exited. */}}
{{- $delay := toString (default "" $v.config.shutdownDelay) }}
{{- if not $delay }}
{{- $delay = ternary "0s" "5s" $native }}
{{- end }}
- name: PLEO_PROXY_SHUTDOWN_DELAY
  value: {{ $delay | quote }}
{{- with $v.config.shutdownTimeout }}
- name: PLEO_PROXY_SHUTDOWN_TIMEOUT
  value: {{ . | toString | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* One probe: dict "probe" (values) "path" "/healthz" "port" (port name). */}}
{{- define "pleo-auth-proxy.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  scheme: HTTP
{{- with .probe.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/*
pleo-auth-proxy.isNative: "true" when the sidecar runs as a Kubernetes native sidecar (an init
container with restartPolicy: Always): sidecar.native true, or auto (the default) on
Kubernetes 1.29 or later (.Capabilities.KubeVersion: the cluster's at helm install/upgrade;
helm template assumes an old version unless given --kube-version). Never in standalone mode.
*/}}
{{- define "pleo-auth-proxy.isNative" -}}
{{- $n := toString .Values.sidecar.native }}
{{- if not .Values.standalone.enabled }}
{{- if eq $n "true" }}true
{{- else if and (eq $n "auto") (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) }}true
{{- end }}
{{- end }}
{{- end }}

{{/*
pleo-auth-proxy.initContainers and pleo-auth-proxy.containers place the container for you:
include the first under your pod's initContainers and the second under its containers; one
of them renders the container, in the form sidecar.native resolves to, the other nothing.
*/}}
{{- define "pleo-auth-proxy.initContainers" -}}
{{- if include "pleo-auth-proxy.isNative" . }}
{{- include "pleo-auth-proxy.nativeSidecar" . }}
{{- else }}
{{- include "pleo-auth-proxy.validate" . }}
{{- end }}
{{- end }}

{{- define "pleo-auth-proxy.containers" -}}
{{- if not (include "pleo-auth-proxy.isNative" .) }}
{{- include "pleo-auth-proxy.classicSidecar" . }}
{{- end }}
{{- end }}

{{/*
pleo-auth-proxy.nativeSidecar: the container as a native sidecar (restartPolicy: Always), one
item of an initContainers list (Kubernetes 1.29 or later). It starts before your containers,
its startup probe holds them back until it listens, and it is stopped after they exit, so a
Job or CronJob completes.
*/}}
{{- define "pleo-auth-proxy.nativeSidecar" -}}
{{- include "pleo-auth-proxy.validate" . }}
{{- include "pleo-auth-proxy.container" (dict "root" . "native" true) | trim }}
{{- end }}

{{/*
pleo-auth-proxy.classicSidecar: the container as a classic sidecar, one item of a containers
list. It never exits by itself: a Job's pod with it never completes.
*/}}
{{- define "pleo-auth-proxy.classicSidecar" -}}
{{- include "pleo-auth-proxy.validate" . }}
{{- include "pleo-auth-proxy.container" (dict "root" . "native" false) | trim }}
{{- end }}

{{/*
pleo-auth-proxy.sidecar: the container in the form sidecar.native resolves to (see
pleo-auth-proxy.isNative): one item of initContainers when native, of containers otherwise.
*/}}
{{- define "pleo-auth-proxy.sidecar" -}}
{{- if include "pleo-auth-proxy.isNative" . }}
{{- include "pleo-auth-proxy.nativeSidecar" . }}
{{- else }}
{{- include "pleo-auth-proxy.classicSidecar" . }}
{{- end }}
{{- end }}

{{/* The container: dict "root" (the chart's context) "native" (bool). */}}
{{- define "pleo-auth-proxy.container" -}}
{{- $native := .native }}
{{- with .root }}
{{- $v := .Values }}
- name: {{ $v.sidecar.containerName }}
  image: {{ include "pleo-auth-proxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - serve
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  env:
    {{- include "pleo-auth-proxy.env" (dict "root" . "native" $native) | trim | nindent 4 }}
  ports:
    {{- if $v.standalone.enabled }}
    - name: pleo-proxy
      containerPort: {{ $v.ports.data }}
      protocol: TCP
    {{- end }}
    - name: pleo-admin
      containerPort: {{ $v.ports.admin }}
      protocol: TCP
    {{- if $v.connect.enabled }}
    - name: pleo-connect
      containerPort: {{ $v.ports.connect }}
      protocol: TCP
    {{- end }}
  {{- if $v.startupProbe.enabled }}
  startupProbe:
    {{- include "pleo-auth-proxy.probe" (dict "probe" $v.startupProbe "path" "/healthz" "port" "pleo-admin") | nindent 4 }}
  {{- end }}
  {{- if $v.livenessProbe.enabled }}
  livenessProbe:
    {{- include "pleo-auth-proxy.probe" (dict "probe" $v.livenessProbe "path" "/healthz" "port" "pleo-admin") | nindent 4 }}
  {{- end }}
  {{- if $v.readinessProbe.enabled }}
  readinessProbe:
    {{- include "pleo-auth-proxy.probe" (dict "probe" $v.readinessProbe "path" "/readyz" "port" "pleo-admin") | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- if (include "pleo-auth-proxy.secretFiles" . | fromYamlArray) }}
    - name: pleo-auth-proxy-secrets
      mountPath: {{ include "pleo-auth-proxy.secretsDir" . }}
      readOnly: true
    {{- end }}
    {{- if eq $v.store.type "file" }}
    - name: pleo-auth-proxy-data
      mountPath: {{ include "pleo-auth-proxy.dataDir" . }}
      {{- if eq $v.store.file.volume "secret" }}
      readOnly: true
      {{- end }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
pleo-auth-proxy.sidecarVolumes: the volumes the container mounts, as items of a volumes list.
Pass this chart's context.
*/}}
{{- define "pleo-auth-proxy.sidecarVolumes" -}}
{{- include "pleo-auth-proxy.volumes" . | trim }}
{{- end }}

{{- define "pleo-auth-proxy.volumes" -}}
{{- $v := .Values }}
{{- $files := include "pleo-auth-proxy.secretFiles" . | fromYamlArray }}
{{- if $files }}
- name: pleo-auth-proxy-secrets
  secret:
    secretName: {{ include "pleo-auth-proxy.secretName" . }}
    # 0444: nothing but the sidecar runs in its container, and your pod may have no fsGroup.
    defaultMode: 292
    items:
      {{- range $files }}
      - key: {{ .key }}
        path: {{ .file }}
      {{- end }}
{{- end }}
{{- if eq $v.store.type "file" }}
{{- $f := $v.store.file }}
- name: pleo-auth-proxy-data
  {{- if eq $f.volume "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "pleo-auth-proxy.fullname" .)) $f.persistentVolumeClaim.existingClaim }}
  {{- else if eq $f.volume "secret" }}
  secret:
    secretName: {{ $f.secret.secretName }}
    defaultMode: 292
    items:
      - key: {{ $f.secret.key }}
        path: credentials.json
  {{- else }}
  emptyDir:
    {{- with $f.emptyDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}
