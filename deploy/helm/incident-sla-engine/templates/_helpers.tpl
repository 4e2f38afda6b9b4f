{{/* Names and labels shared by every template. */}}

{{- define "engine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "engine.fullname" -}}
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

{{- define "engine.baseLabels" -}}
app.kubernetes.io/name: {{ include "engine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The engine's pods only (the migration job's pods share the base labels, not the component). */}}
{{- define "engine.selectorLabels" -}}
{{ include "engine.baseLabels" . }}
app.kubernetes.io/component: engine
{{- end }}

{{- define "engine.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "engine.baseLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: incident-sla-engine
{{- end }}

{{- define "engine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "engine.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "engine.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "engine.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "engine.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{/* Environment of the engine and of the migration job: settings, then secrets by reference. */}}
{{- define "engine.env" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl }}
{{- if .mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .mechanism | quote }}
{{- end }}
{{- if .existingSecret }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret | quote }}, key: {{ .usernameKey | quote }}}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret | quote }}, key: {{ .passwordKey | quote }}}
{{- end }}
{{- end }}
{{- with .Values.kafka.tls }}
{{- if .existingSecret }}
- name: KAFKA_SSL_CAFILE
  value: /etc/incidents/kafka-tls/{{ .caKey }}
{{- if .certKey }}
- name: KAFKA_SSL_CERTFILE
  value: /etc/incidents/kafka-tls/{{ .certKey }}
- name: KAFKA_SSL_KEYFILE
  value: /etc/incidents/kafka-tls/{{ .keyKey }}
{{- end }}
{{- end }}
{{- end }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret | quote }}, key: {{ .Values.database.urlKey | quote }}}
- name: INCIDENTS_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: K8S_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: K8S_NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: OTEL_SERVICE_NAME
  value: {{ include "engine.fullname" . | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE),k8s.node.name=$(K8S_NODE_NAME),service.version=%s%s" (default .Chart.AppVersion .Values.image.tag) (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerRatio | quote }}
{{- end }}

{{/* The volume and the mount of the Kafka TLS files (used when kafka.tls.existingSecret is set). */}}
{{- define "engine.tlsVolume" -}}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret | quote }}
    defaultMode: 0440
{{- end }}

{{- define "engine.tlsMount" -}}
- name: kafka-tls
  mountPath: /etc/incidents/kafka-tls
  readOnly: true
{{- end }}

{{/* The intake's pods only (a component of their own, so the engine's Service never selects them). */}}
{{- define "intake.selectorLabels" -}}
{{ include "engine.baseLabels" . }}
app.kubernetes.io/component: intake
{{- end }}

{{- define "intake.fullname" -}}
{{- printf "%s-intake" (include "engine.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "intake.integrationsConfigMap" -}}
{{- default (printf "%s-integrations" (include "intake.fullname" .)) .Values.intake.integrations.existingConfigMap }}
{{- end }}
