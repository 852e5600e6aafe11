{{/* Names, labels and the checks values.schema.json cannot express. */}}

{{- define "eep.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eep.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "eep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "eep.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "eep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: elastic-ep-operator
{{- end -}}

{{- define "eep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "eep.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "eep.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches in watch.mode=namespaces, as a JSON list (fromJsonArray). */}}
{{- define "eep.watchNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The namespaces that get the workers' ServiceAccount and Role, as a JSON list. */}}
{{- define "eep.workerNamespaces" -}}
{{- if eq .Values.watch.mode "namespaces" -}}
{{- include "eep.watchNamespaces" . -}}
{{- else if .Values.workers.namespaces -}}
{{- .Values.workers.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* Cross-field rules; rendered (empty) by deployment.yaml so every install runs them. */}}
{{- define "eep.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: more than one operator replica needs leader election (set leaderElection.enabled=true), otherwise every replica acts on the same clusters" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and (eq .Values.watch.mode "all") .Values.watch.namespaces -}}
{{- fail "watch.namespaces is set but watch.mode is \"all\": set watch.mode=namespaces to restrict the operator to those namespaces" -}}
{{- end -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) -}}
{{- fail "operator.metricsPort and operator.healthPort must differ" -}}
{{- end -}}
{{- end -}}

{{/* The operator's namespaced rules: in its ClusterRole (watch.mode=all) or each Role (watch.mode=namespaces). */}}
{{- define "eep.namespacedRules" -}}
# The custom resource: kopf lists and watches it. Patch: the `elasticep.io/epoch-floor` annotation (the
# highest epoch published, written before each status that raises it), and removing the kopf finalizer that
# older builds (a kopf timer) left on every CR; nothing puts one on now, so CRs stay deletable after
# `helm uninstall`.
- apiGroups: [elasticep.io]
  resources: [elasticepclusters]
  verbs: [get, list, watch, patch]
# Owner references with blockOwnerDeletion (pods, the Service, the PodDisruptionBudget) need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift's default). Nothing is written to it.
- apiGroups: [elasticep.io]
  resources: [elasticepclusters/finalizers]
  verbs: [update]
# Status is the operator's memory and the workers' membership signal; written with replace
# (compare-and-set on resourceVersion), never patched.
- apiGroups: [elasticep.io]
  resources: [elasticepclusters/status]
  verbs: [get, update]
# One pod per member: observe, create replacements, delete failed or stuck ones. Never update; patch only to
# remove Kueue's `kueue.x-k8s.io/managed` finalizer from a member pod it deleted (gang admission).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# The headless Service that gives members their DNS names; patch puts its ports back to the group's.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# The PodDisruptionBudget that lets a drain evict one member at a time, until its replacement is Ready.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create]
# Events on the ElasticEPCluster for every transition (the operator and kopf only ever create them).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
