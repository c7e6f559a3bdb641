{{/* Names, labels and the few computed settings every template shares. */}}

{{- define "voice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voice.fullname" -}}
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

{{/* Name of one service's objects: <fullname>-<service>. Call with (list $root $name). */}}
{{- define "voice.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "voice.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "voice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voice-platform
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "voice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one service's objects. Call with (list $root $name). */}}
{{- define "voice.componentLabels" -}}
{{ include "voice.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "voice.componentSelectorLabels" -}}
{{ include "voice.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "voice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image of a service: its own repository/tag when set, else the shared image. */}}
{{- define "voice.image" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- $own := $svc.image | default dict }}
{{- $repo := $own.repository | default $root.Values.image.repository }}
{{- $tag := $own.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Client Service name of the official NATS chart (its service.name, else its fullname). */}}
{{- define "voice.natsServiceName" -}}
{{- $nats := .Values.nats | default dict }}
{{- $name := default "nats" $nats.nameOverride }}
{{- if ($nats.service | default dict).name }}
{{- $nats.service.name }}
{{- else if $nats.fullnameOverride }}
{{- $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "voice.natsUrl" -}}
{{- if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "voice.natsServiceName" .) .Release.Namespace }}
{{- else }}
{{- fail "NATS: set nats.enabled=true or externalNats.url" }}
{{- end }}
{{- end }}

{{/*
NATS_REPLICAS of every service: 1, 3 or 5, and no more than the bundled NATS cluster has servers (a stream
cannot have more copies than there are servers; the services would refuse to start).
*/}}
{{- define "voice.natsReplicas" -}}
{{- $replicas := int .Values.streams.replicas }}
{{- if not (has $replicas (list 1 3 5)) }}
{{- fail (printf "streams.replicas: 1, 3 or 5, not %d" $replicas) }}
{{- end }}
{{- if and .Values.nats.enabled (not .Values.externalNats.url) }}
{{- $cluster := (.Values.nats.config | default dict).cluster | default dict }}
{{- $servers := ternary (int ($cluster.replicas | default 3)) 1 (default false $cluster.enabled) }}
{{- if gt $replicas $servers }}
{{- fail (printf "streams.replicas=%d needs a NATS cluster of at least %d servers; nats.config.cluster has %d" $replicas $replicas $servers) }}
{{- end }}
{{- end }}
{{- $replicas }}
{{- end }}

{{- define "voice.publicBaseUrl" -}}
{{- if .Values.publicBaseUrl }}
{{- .Values.publicBaseUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) $host }}
{{- end }}
{{- end }}

{{/* Chart-managed Secret (development values only). */}}
{{- define "voice.secretName" -}}
{{- printf "%s-secrets" (include "voice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where each secret-backed variable comes from: values block and the key holding an inline value.
A service lists the variables it needs in `secretEnv`.
*/}}
{{- define "voice.secretSources" -}}
DATABASE_URL: {block: database, inline: url}
LLM_API_KEY: {block: llm, inline: apiKey}
TWILIO_AUTH_TOKEN: {block: twilio, inline: authToken}
BOOTSTRAP_ADMIN_KEY: {block: bootstrapAdmin, inline: key}
BOOTSTRAP_ADMIN_PASSWORD: {block: consoleAdmin, inline: password}
SECRETS_KEY: {block: tenantSecrets, inline: key}
CALL_TOKEN_KEY: {block: callTokens, inline: key}
WEBRTC_TURN_CREDENTIAL: {block: webrtcTurn, inline: credential}
LOG_REDACTION_KEY: {block: logRedaction, inline: key}
RECORDING_S3_SECRET_ACCESS_KEY: {block: recordingStore, inline: secretAccessKey}
{{- end }}

{{/* Inline secret values that go into the chart-managed Secret, as a dict. */}}
{{- define "voice.inlineSecrets" -}}
{{- $out := dict }}
{{- range $env, $src := include "voice.secretSources" . | fromYaml }}
{{- $block := index $.Values $src.block }}
{{- $value := index $block $src.inline }}
{{- if and (not $block.existingSecret) $value }}
{{- $_ := set $out $env $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Environment of one service container. Call with (list $root $name $svc).
Precedence: the service's `env`, then the global `env`, then what the chart derives
(NATS_URL, HTTP_PORT, SHUTDOWN_GRACE_S, ...); secret-backed variables come last.
*/}}
{{- define "voice.env" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $svc := index . 2 }}
{{- $v := $root.Values }}
{{- $derived := dict
  "NATS_URL" (include "voice.natsUrl" $root)
  "HTTP_HOST" "0.0.0.0"
  "HTTP_PORT" $svc.port
  "SHUTDOWN_GRACE_S" (max 1 (sub (sub (int $svc.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds)) 5))
  "OTEL_EXPORTER_OTLP_ENDPOINT" $v.otel.endpoint
  "NATS_REPLICAS" (include "voice.natsReplicas" $root)
  "NATS_AUDIO_STORAGE" $v.streams.audioStorage }}
{{- /* settings reach only the services that read them */}}
{{- /* brain talks with the platform model; analytics asks it for post-call summaries */}}
{{- if or (eq $name "brain") (eq $name "analytics") }}
{{- $_ := set $derived "LLM_BASE_URL" $v.llm.baseUrl }}
{{- $_ := set $derived "LLM_MODEL" $v.llm.model }}
{{- end }}
{{- if and (eq $name "brain") $v.llm.replicaBaseUrls }}
{{- $_ := set $derived "LLM_BASE_URL_REPLICAS" (join "," $v.llm.replicaBaseUrls) }}
{{- end }}
{{- if and (eq $name "analytics") $v.llm.summaryBaseUrl }}
{{- $_ := set $derived "SUMMARY_LLM_BASE_URL" $v.llm.summaryBaseUrl }}
{{- end }}
{{- if eq $name "ingress" }}
{{- $_ := set $derived "PUBLIC_BASE_URL" (include "voice.publicBaseUrl" $root) }}
{{- $_ := set $derived "TWILIO_API_BASE_URL" $v.twilio.apiBaseUrl }}
{{- if $v.twilio.accountSid }}
{{- $_ := set $derived "TWILIO_ACCOUNT_SID" $v.twilio.accountSid }}
{{- end }}
{{- end }}
{{- if or (eq $name "brain") (eq $name "control-api") (eq $name "analytics") (eq $name "ingress") }}
{{- $_ := set $derived "EGRESS_ALLOW" (join "," ($v.egressAllow | default list)) }}
{{- end }}
{{- if eq $name "control-api" }}
{{- $_ := set $derived "TRUSTED_PROXIES" (join "," ($v.trustedProxies | default list)) }}
{{- $_ := set $derived "BOOTSTRAP_ADMIN_EMAIL" $v.consoleAdmin.email }}
{{- $_ := set $derived "CONSOLE_SESSION_TTL_S" $v.console.sessionTtlSeconds }}
{{- /* behind an Ingress that terminates TLS, the console's cookies are Secure whatever control-api is told */}}
{{- $tls := and $v.ingress.enabled (gt (len ($v.ingress.tls | default list)) 0) }}
{{- $_ := set $derived "CONSOLE_SECURE_COOKIES" (ternary "always" $v.console.secureCookies (and $tls (eq $v.console.secureCookies "auto"))) }}
{{- end }}
{{- if and (eq $name "ingress") $v.sip.enabled }}
{{- $_ := set $derived "SIP_ENABLED" "true" }}
{{- $_ := set $derived "SIP_UDP_PORT" $v.sip.port }}
{{- $_ := set $derived "SIP_TCP_ENABLED" (ternary "true" "false" $v.sip.tcp) }}
{{- $_ := set $derived "SIP_TCP_PORT" $v.sip.port }}
{{- $_ := set $derived "SIP_RTP_PORT_MIN" $v.sip.rtpPortStart }}
{{- $_ := set $derived "SIP_RTP_PORT_MAX" (add $v.sip.rtpPortStart $v.sip.rtpPortCount -1) }}
{{- $_ := set $derived "SIP_ADVERTISED_ADDRESS" ($v.sip.advertisedAddress | default $v.sip.service.loadBalancerIP) }}
{{- $_ := set $derived "SIP_ALLOWED_SOURCES" (join "," ($v.sip.allowedSources | default list)) }}
{{- $_ := set $derived "SIP_TRUNKS_ONLY" (ternary "true" "false" (default false $v.sip.trunksOnly)) }}
{{- $_ := set $derived "SIP_REALM" ($v.sip.realm | default "voice-platform") }}
{{- $_ := set $derived "SIP_DIAL_TIMEOUT_S" ($v.sip.dialTimeoutSeconds | default 60) }}
{{- $_ := set $derived "SIP_DEFAULT_COUNTRY_PREFIX" $v.sip.defaultCountryPrefix }}
{{- $_ := set $derived "SIP_DEFAULT_NUMBER" $v.sip.defaultNumber }}
{{- $_ := set $derived "SIP_MAX_CALLS" (min $v.sip.maxCallsPerReplica $v.sip.rtpPortCount) }}
{{- end }}
{{- if eq $name "ingress" }}
{{- $_ := set $derived "CHAT_IDLE_TIMEOUT_S" $v.chat.idleTimeoutSeconds }}
{{- $_ := set $derived "CHAT_MAX_SESSIONS" $v.chat.maxSessionsPerReplica }}
{{- end }}
{{- if eq $name "control-api" }}
{{- $_ := set $derived "CHAT_REPLY_TIMEOUT_S" $v.chat.replyTimeoutSeconds }}
{{- $_ := set $derived "LIVE_FEED_MAX_PER_TENANT" $v.liveFeed.maxPerTenant }}
{{- $_ := set $derived "LIVE_FEED_MAX_PER_CREDENTIAL" $v.liveFeed.maxPerCredential }}
{{- $_ := set $derived "LIVE_FEED_BUFFER" $v.liveFeed.buffer }}
{{- $_ := set $derived "LIVE_FEED_HEARTBEAT_S" $v.liveFeed.heartbeatSeconds }}
{{- $_ := set $derived "LIVE_FEED_MAX_CALLS" $v.liveFeed.maxCalls }}
{{- $_ := set $derived "LIVE_FEED_RESUME_WINDOW_S" $v.liveFeed.resumeWindowSeconds }}
{{- $_ := set $derived "WHISPER_MAX_CHARS" $v.liveFeed.whisperMaxChars }}
{{- end }}
{{- if and (or (eq $name "analytics") (eq $name "control-api")) $v.recordingStore.bucket }}
{{- $_ := set $derived "RECORDING_S3_BUCKET" $v.recordingStore.bucket }}
{{- $_ := set $derived "RECORDING_S3_ENDPOINT_URL" $v.recordingStore.endpointUrl }}
{{- $_ := set $derived "RECORDING_S3_REGION" $v.recordingStore.region }}
{{- $_ := set $derived "RECORDING_S3_PREFIX" $v.recordingStore.prefix }}
{{- $_ := set $derived "RECORDING_S3_ACCESS_KEY_ID" $v.recordingStore.accessKeyId }}
{{- end }}
{{- $hostIp := false }}
{{- if and (eq $name "ingress") $v.webrtc.enabled }}
{{- $_ := set $derived "WEBRTC_UDP_PORT_MIN" $v.webrtc.udpPortStart }}
{{- $_ := set $derived "WEBRTC_UDP_PORT_MAX" (add $v.webrtc.udpPortStart $v.webrtc.udpPortCount -1) }}
{{- $_ := set $derived "WEBRTC_ADVERTISED_ADDRESS" $v.webrtc.advertisedAddress }}
{{- $hostIp = and $v.webrtc.hostPorts (not $v.webrtc.advertisedAddress) (not (hasKey ($svc.env | default dict) "WEBRTC_ADVERTISED_ADDRESS")) (not (hasKey ($v.env | default dict) "WEBRTC_ADVERTISED_ADDRESS")) }}
{{- end }}
{{- if eq $name "ingress" }}
{{- $_ := set $derived "WEBRTC_ICE_SERVERS" $v.webrtc.iceServers }}
{{- $_ := set $derived "WEBRTC_TURN_USERNAME" $v.webrtc.turnUsername }}
{{- end }}
{{- $env := merge (dict) ($svc.env | default dict) ($v.env | default dict) $derived }}
{{- range $key, $value := $env }}
{{- if not (eq (toString $value) "") }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- if $hostIp }}
{{- /* a pod's media ports are on its node (hostPort): browsers reach them at the node's address */}}
- name: WEBRTC_ADVERTISED_ADDRESS
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- $sources := include "voice.secretSources" $root | fromYaml }}
{{- range $var := $svc.secretEnv | default list }}
{{- $src := required (printf "secretEnv: unknown variable %s" $var) (index $sources $var) }}
{{- $block := index $v $src.block }}
{{- if $block.existingSecret }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $block.existingSecret }}
      key: {{ $block.secretKey }}
{{- else if index $block $src.inline }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ include "voice.secretName" $root }}
      key: {{ $var }}
{{- end }}
{{- end }}
{{- end }}

{{/* Services an Ingress path routes to, as a list of names. */}}
{{- define "voice.exposedServices" -}}
{{- $names := list }}
{{- if .Values.ingress.enabled }}
{{- if .Values.twilio.enabled }}
{{- $names = append $names "ingress" }}
{{- end }}
{{- range .Values.ingress.hosts }}
{{- range .paths }}
{{- $names = append $names .service }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson (uniq $names) }}
{{- end }}

{{/*
Twilio on ingress fails closed: without TWILIO_AUTH_TOKEN ingress refuses every Twilio request, and
TWILIO_ALLOW_UNSIGNED (which accepts them unsigned) is for a developer's machine only. So the chart
refuses to render Twilio without a token, and never renders the development flag.
*/}}
{{- define "voice.twilioChecked" -}}
{{- $v := .Values }}
{{- range $env := list ($v.env | default dict) ($v.services.ingress.env | default dict) }}
{{- $allow := index $env "TWILIO_ALLOW_UNSIGNED" | toString | lower }}
{{- if not (has $allow (list "" "<nil>" "false" "0" "no" "off")) }}
{{- fail "TWILIO_ALLOW_UNSIGNED is for local development only; set twilio.existingSecret instead" }}
{{- end }}
{{- end }}
{{- if and $v.twilio.enabled (not $v.twilio.existingSecret) (not $v.twilio.authToken) }}
{{- fail "twilio.enabled: set twilio.existingSecret (a Secret with the Twilio auth token); ingress refuses unsigned Twilio requests" }}
{{- end }}
{{- end }}
