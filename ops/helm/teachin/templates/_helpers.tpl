{{/*
Shared pieces of every template. Names are derived from the release so two environments'
releases never collide, and labels follow the Kubernetes recommended set so Prometheus,
KEDA and the PodDisruptionBudgets can select each role precisely.
*/}}

{{- define "teachin.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "teachin.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: teachin
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ include "teachin.imageTag" . | quote }}
teachin.io/environment: {{ .Values.global.environment }}
{{- end -}}

{{/* Labels of objects that belong to the release as a whole. */}}
{{- define "teachin.labels" -}}
{{ include "teachin.commonLabels" . }}
app.kubernetes.io/name: teachin
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component's objects: call with (dict "root" $ "component" "manager"). */}}
{{- define "teachin.componentLabels" -}}
{{ include "teachin.commonLabels" .root }}
{{ include "teachin.selectorLabels" . }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "manager"). */}}
{{- define "teachin.selectorLabels" -}}
app.kubernetes.io/name: teachin
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "teachin.componentName" -}}
{{- printf "%s-%s" (include "teachin.fullname" .root) .component -}}
{{- end -}}

{{- define "teachin.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* repository@digest when a digest is pinned (prod), else repository:tag. */}}
{{- define "teachin.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "teachin.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "teachin.serviceAccountName" -}}
{{- include "teachin.fullname" . -}}
{{- end -}}

{{/* Is an ExternalSecret group active? Groups may require a feature of this environment. */}}
{{- define "teachin.secretGroupActive" -}}
{{- $root := .root -}}
{{- $req := .group.requires | default "" -}}
{{- if eq $req "" -}}true
{{- else if and (eq $req "servicebus") (eq $root.Values.bus.backend "servicebus") -}}true
{{- else if and (eq $req "azureSignalR") $root.Values.azureSignalR.enabled -}}true
{{- else if and (eq $req "redisFromKeyVault") (eq $root.Values.redis.source "keyVault") -}}true
{{- end -}}
{{- end -}}

{{/* The Secret an ExternalSecret group produces. */}}
{{- define "teachin.secretName" -}}
{{- printf "%s-%s" (include "teachin.fullname" .root) .name -}}
{{- end -}}

{{/*
The environment of one workload ("manager", "accessor", "engine" or "jobs"): the plain
settings, then every Key Vault value granted to that workload, then Redis. Names are the ones
src/config.rs reads (ops/check parses it: what it requires outside a local environment must
reach every workload, and a TEACHIN_* name it does not read is a typo), plus the names the
cloud architecture's "Environment Variables" list gives the code being written.
*/}}
{{- define "teachin.env" -}}
{{- $root := .root -}}
{{- $workload := .workload -}}
{{- $v := $root.Values -}}
- name: TEACHIN_ENV
  value: {{ $v.global.environment | quote }}
{{- /* Prefix of this environment's keys and channels on the shared Redis. */}}
- name: TEACHIN_NAMESPACE
  value: {{ $v.global.environment | quote }}
- name: TEACHIN_LOG_FORMAT
  value: {{ $v.config.logFormat | quote }}
- name: TEACHIN_LOG
  value: {{ $v.config.logFilter | quote }}
- name: TEACHIN_DB_MAX_CONNECTIONS
  value: {{ $v.config.dbMaxConnections | quote }}
- name: TEACHIN_BUS
  value: {{ $v.bus.backend | quote }}
{{- if eq $v.bus.backend "postgres" }}
- name: TEACHIN_BUS_LOCK_SECONDS
  value: {{ $v.bus.postgres.lockSeconds | quote }}
- name: TEACHIN_BUS_MAX_DELIVERY_COUNT
  value: {{ $v.bus.postgres.maxDeliveryCount | quote }}
{{- end }}
- name: TEACHIN_REDIS_DB
  value: {{ $v.redis.databaseIndex | quote }}
{{- if ne $workload "jobs" }}
- name: {{ printf "TEACHIN_%s_PORT" (upper $workload) }}
  value: {{ (index $v.roles $workload).port | quote }}
{{- end }}
{{- if eq $workload "manager" }}
- name: TEACHIN_CORS_ORIGINS
  value: {{ join "," $v.config.corsOrigins | quote }}
- name: TEACHIN_TRUST_FORWARDED_FOR
  value: {{ $v.config.trustForwardedFor | quote }}
- name: TEACHIN_COOKIE_SAME_SITE
  value: {{ $v.config.cookieSameSite | quote }}
- name: JWT_ISSUER
  value: {{ $v.config.jwt.issuer | quote }}
- name: JWT_AUDIENCE
  value: {{ $v.config.jwt.audience | quote }}
{{- with $v.config.rateLimits.login }}
- name: TEACHIN_LOGIN_RATE_LIMIT
  value: {{ . | quote }}
{{- end }}
{{- with $v.config.rateLimits.refresh }}
- name: TEACHIN_REFRESH_RATE_LIMIT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq $workload "engine" }}
- name: AZURE_OPENAI_ENDPOINT
  value: {{ $v.config.azureOpenAI.endpoint | quote }}
- name: AZURE_OPENAI_DEPLOYMENT
  value: {{ $v.config.azureOpenAI.deployment | quote }}
- name: AZURE_OPENAI_API_VERSION
  value: {{ $v.config.azureOpenAI.apiVersion | quote }}
{{- end }}
{{- if or (eq $workload "manager") (eq $workload "accessor") }}
- name: Speech__Region
  value: {{ $v.config.speech.region | quote }}
{{- end }}
{{- /* jobs: `teachin cron purge-uploads` sweeps the avatars container. */}}
{{- if or (eq $workload "manager") (eq $workload "accessor") (eq $workload "jobs") }}
- name: Avatars__Container
  value: {{ $v.config.avatars.container | quote }}
{{- end }}
{{- if eq $workload "accessor" }}
- name: BREVO_SMTP_HOST
  value: {{ $v.config.brevo.smtpHost | quote }}
- name: BREVO_SMTP_PORT
  value: {{ $v.config.brevo.smtpPort | quote }}
- name: BREVO_SENDER_EMAIL
  value: {{ $v.config.brevo.senderEmail | quote }}
{{- end }}
{{- range $name, $value := $v.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- if $v.externalSecrets.enabled }}
{{- range $group := $v.externalSecrets.secrets }}
{{- if include "teachin.secretGroupActive" (dict "root" $root "group" $group) }}
{{- range $item := $group.data }}
{{- if has $workload $item.roles }}
- name: {{ $item.env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "teachin.secretName" (dict "root" $root "name" $group.name) }}
      key: {{ $item.env }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $v.redis.source "selfHosted" }}
{{- /* Kubernetes expands $(REDIS_PASSWORD) because it is defined above the use. */}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.passwordSecret.name }}
      key: {{ $v.redis.passwordSecret.key }}
- name: ConnectionStrings__Redis
  value: {{ printf "%s:%d,password=$(REDIS_PASSWORD)" $v.redis.host (int $v.redis.port) | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the roles, the migration Job and the CronJobs. */}}
{{- define "teachin.podCommon" -}}
serviceAccountName: {{ include "teachin.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A one-shot `teachin <args>` container (migration Job, CronJobs). */}}
{{- define "teachin.jobContainer" -}}
- name: {{ .name }}
  image: {{ include "teachin.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
    {{- toYaml .args | nindent 4 }}
  env:
    {{- include "teachin.env" (dict "root" .root "workload" "jobs") | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}
