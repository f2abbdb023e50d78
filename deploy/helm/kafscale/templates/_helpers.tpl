{{/* The release's full name: the release name, with "-kafscale" unless it already says so. */}}
{{- define "kafscale.fullname" -}}
{{- if contains "kafscale" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kafscale" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kafscale.labels" -}}
app.kubernetes.io/name: kafscale-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kafscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kafscale.selector" -}}
app.kubernetes.io/name: kafscale-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kafscale.serviceAccount" -}}
{{- default (include "kafscale.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kafscale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* What the operator may do in a namespace it manages (least privilege: no Secrets, no
     deletes but pods it rolls and an autoscaler it no longer wants). */}}
{{- define "kafscale.namespacedRules" -}}
- apiGroups: ["kafscale.io"]
  resources: ["kafscaleclusters", "kafscaletopics"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kafscale.io"]
  resources: ["kafscaleclusters/status", "kafscaletopics/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
