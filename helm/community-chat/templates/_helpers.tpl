{{/* Names, labels and the pieces shared by the api and gateway Deployments and the migration Job. */}}

{{- define "community-chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "community-chat.fullname" -}}
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

{{/* The name of one tier's objects: <fullname>-api / <fullname>-gateway. Takes (dict "root" $ "tier" "api"). */}}
{{- define "community-chat.tierName" -}}
{{- printf "%s-%s" (include "community-chat.fullname" .root | trunc 55 | trimSuffix "-") .tier }}
{{- end }}

{{- define "community-chat.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "community-chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: community-chat
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "community-chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "community-chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one tier's objects. Takes (dict "root" $ "tier" "api"). */}}
{{- define "community-chat.tierLabels" -}}
{{ include "community-chat.labels" .root }}
app.kubernetes.io/component: {{ .tier }}
{{- end }}

{{/* Selector of one tier's pods. Takes (dict "root" $ "tier" "api"). */}}
{{- define "community-chat.tierSelectorLabels" -}}
{{ include "community-chat.selectorLabels" .root }}
app.kubernetes.io/component: {{ .tier }}
{{- end }}

{{- define "community-chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "community-chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "community-chat.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret the pods read DATABASE_URL, REDIS_URL and the JWT key from. */}}
{{- define "community-chat.secretName" -}}
{{- default (include "community-chat.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* Whether tokens are checked with a public key (RS256/ES256) rather than a shared secret. */}}
{{- define "community-chat.usesPublicKey" -}}
{{- if ne (upper .Values.config.jwt.algorithm) "HS256" }}true{{- end }}
{{- end }}

{{/* Where the public key is mounted (RS256/ES256). */}}
{{- define "community-chat.publicKeyDir" -}}/etc/community-chat/jwt{{- end }}

{{/*
Non-secret settings as environment variables (the ConfigMap's data). Null limits are left out so
the binary's defaults apply.
*/}}
{{- define "community-chat.configEnv" -}}
{{- $c := .Values.config }}
{{- $env := dict
  "RUST_LOG" $c.rustLog
  "LOG_FORMAT" $c.logFormat
  "REDIS_CHANNEL_PREFIX" $c.redisChannelPrefix
  "DATABASE_MAX_CONNECTIONS" $c.databaseMaxConnections
  "JWT_ALGORITHM" (upper $c.jwt.algorithm)
  "JWT_EMAIL_CLAIM" $c.jwt.emailClaim
  "JWT_ORG_CLAIM" $c.jwt.orgClaim
  "LISTEN_ADDR" "0.0.0.0:8080"
}}
{{- $optional := dict
  "CORS_ORIGINS" $c.corsOrigins
  "OTEL_EXPORTER_OTLP_ENDPOINT" $c.otelExporterOtlpEndpoint
  "JWT_ISSUER" $c.jwt.issuer
  "JWT_AUDIENCE" $c.jwt.audience
  "REDIS_SHARDED_PUBSUB" $c.redisShardedPubsub
  "MAX_CONTENT_CHARS" $c.limits.maxContentChars
  "MAX_ATTACHMENTS" $c.limits.maxAttachments
  "MAX_NAME_CHARS" $c.limits.maxNameChars
  "MAX_DESCRIPTION_CHARS" $c.limits.maxDescriptionChars
  "MAX_BODY_BYTES" $c.limits.maxBodyBytes
  "MAX_INITIAL_MEMBERS" $c.limits.maxInitialMembers
  "CONTENT_TYPES" $c.limits.contentTypes
  "SOCKET_MAX_QUEUED_PACKETS" $c.socket.maxQueuedPackets
  "SOCKET_SENDS_PER_SECOND" $c.socket.sendsPerSecond
  "SOCKET_MAX_PAYLOAD_BYTES" $c.socket.maxPayloadBytes
  "SOCKET_READ_BUFFER_BYTES" $c.socket.readBufferBytes
  "TYPING_THROTTLE_MS" $c.socket.typingThrottleMs
  "SOCKET_PING_INTERVAL_MS" $c.socket.pingIntervalMs
  "SOCKET_PING_TIMEOUT_MS" $c.socket.pingTimeoutMs
  "GAP_FILL_DELAY_MS" $c.socket.gapFillDelayMs
}}
{{- range $k, $v := $optional }}
{{- if not (kindIs "invalid" $v) }}
{{- if ne (toString $v) "" }}
{{- $_ := set $env $k $v }}
{{- end }}
{{- end }}
{{- end }}
{{- if include "community-chat.usesPublicKey" . }}
{{- $_ := set $env "JWT_PUBLIC_KEY_FILE" (printf "%s/%s" (include "community-chat.publicKeyDir" .) .Values.secret.keys.jwtPublicKey) }}
{{- end }}
{{- range $k, $v := $env }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/*
The credentials as container env entries, read from a Secret. Takes (dict "root" $ "secret" NAME
"databaseOnly" BOOL): the migration Job needs DATABASE_URL only.
*/}}
{{- define "community-chat.secretEnv" -}}
{{- $keys := .root.Values.secret.keys }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $keys.databaseUrl }}
{{- if not .databaseOnly }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $keys.redisUrl }}
{{- if not (include "community-chat.usesPublicKey" .root) }}
- name: JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $keys.jwtSecret }}
{{- end }}
{{- end }}
{{- end }}

{{/* The /tmp emptyDir every container mounts (the root filesystem is read-only). */}}
{{- define "community-chat.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}
