{{/* Names and labels shared by every template. */}}

{{- define "modelplane.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelplane.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "modelplane.fullname" .) -}}
{{- end -}}

{{- define "modelplane.selectorLabels" -}}
app.kubernetes.io/name: modelplane-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelplane.labels" -}}
{{ include "modelplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modelplane
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "modelplane.runtimeImage" -}}
{{- $image := .Values.runtime.image -}}
{{- printf "%s:%s" $image.repository ($image.tag | default (printf "%s-%s" .Chart.AppVersion $image.flavor)) -}}
{{- end -}}

{{/*
The operator's permissions on namespaced resources: exactly the verbs the code uses. The
integration tests run the operator with this ServiceAccount's token, so a missing verb
fails them; a test checks that a verb not listed is refused.
*/}}
{{- define "modelplane.namespacedRules" -}}
# The custom resources: watched; only their status is written (GitOps sees no drift).
- apiGroups: [modelplane.io]
  resources: [modeltrainings, modeldeployments]
  verbs: [get, list, watch]
- apiGroups: [modelplane.io]
  resources: [modeltrainings/status, modeldeployments/status]
  verbs: [patch]
# Training children: server-side apply (create + patch), watched for status, Jobs replaced.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [create, patch]
# Serving: the Ray head and workers; the Ray cluster's token (read back to call the head's
# dashboard).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]  # patch: pod-deletion-cost on idle Ray workers
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]  # list: why a Job could not create its pods (quota)
{{- if .Values.peering.enabled }}
# Peering: instances see each other; one reconciles, the others stand by.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
