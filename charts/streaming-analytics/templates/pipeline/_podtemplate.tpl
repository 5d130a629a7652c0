{{/*
Pod template of one Flink role ("jobmanager" or "taskmanager"). Each role gets a complete template
of its own rather than a shared spec.podTemplate merged with a per-role one: the operator merges
arrays (containers, volumes) by position unless told otherwise, which would silently overwrite
volumes. Flink merges its own container into the one named flink-main-container.
Usage: include "streaming-analytics.flinkPodTemplate" (list . "taskmanager")
*/}}
{{- define "streaming-analytics.flinkPodTemplate" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $p := $root.Values.pipeline }}
{{- $harness := $p.sdkHarness }}
apiVersion: v1
kind: Pod
metadata:
  labels:
    {{- /* Selector labels only: a chart or app version label here would change the pod template
         on every chart upgrade, and the operator would redeploy the job through a savepoint. */}}
    {{- include "streaming-analytics.componentSelectorLabels" (list $root "pipeline") | trim | nindent 4 }}
    streaming-analytics/flink-role: {{ $role }}
    {{- with $p.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $p.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  securityContext:
    {{- toYaml $p.podSecurityContext | nindent 4 }}
  enableServiceLinks: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- if eq $role "taskmanager" }}
  {{- if $harness.nativeSidecar }}
  initContainers:
    {{- include "streaming-analytics.sdkHarnessContainer" $root | trim | nindent 4 }}
      # A native sidecar: started (and probed) before the TaskManager, stopped after it.
      restartPolicy: Always
  {{- end }}
  {{- end }}
  containers:
    - name: flink-main-container
      env:
        # The Kafka read is Java KafkaIO in this JVM (the job jar is built with --endpoints=workers):
        # the TaskManager's readers connect with these servers, and the JobManager lists the
        # topic's partitions with them when it builds the job graph.
        - name: SA_KAFKA_BOOTSTRAP
          value: {{ $p.env.SA_KAFKA_BOOTSTRAP | toString | quote }}
      securityContext:
        {{- toYaml $p.securityContext | nindent 8 }}
      ports:
        - name: metrics
          containerPort: {{ $p.metrics.port }}
          protocol: TCP
      volumeMounts:
        - name: flink-tmp
          mountPath: /tmp
        - name: flink-log
          mountPath: /opt/flink/log
        {{- if $p.storage.enabled }}
        - name: flink-data
          mountPath: /flink-data
        {{- end }}
    {{- if and (eq $role "taskmanager") (not $harness.nativeSidecar) }}
    {{- include "streaming-analytics.sdkHarnessContainer" $root | trim | nindent 4 }}
    {{- end }}
  volumes:
    - name: flink-tmp
      emptyDir:
        sizeLimit: {{ $p.tmpSizeLimit }}
    - name: flink-log
      emptyDir:
        sizeLimit: {{ $p.logSizeLimit }}
    {{- if $p.storage.enabled }}
    - name: flink-data
      persistentVolumeClaim:
        claimName: {{ include "streaming-analytics.componentName" (list $root "flink-data") }}
    {{- end }}
    {{- if eq $role "taskmanager" }}
    - name: harness-tmp
      emptyDir:
        sizeLimit: {{ $harness.tmpSizeLimit }}
    - name: models
      {{- toYaml $p.models.volume | nindent 6 }}
    {{- end }}
  {{- with $p.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $p.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $p.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The Beam Python SDK harness: our worker pool (pipelines/worker_pool.py), which the TaskManager asks
for SDK workers on 127.0.0.1:<port> (the job jar's --environment_type=EXTERNAL
--environment_config=127.0.0.1:<port>). It binds the pod's loopback only, unlike Beam's
worker_pool_main ([::]); the port is also declared nowhere and admitted by no NetworkPolicy. Its
workers connect back to the TaskManager's Beam Fn API servers over the same loopback.
*/}}
{{- define "streaming-analytics.sdkHarnessContainer" -}}
{{- $p := .Values.pipeline }}
- name: beam-sdk-harness
  image: {{ include "streaming-analytics.image" (list .Values.image .) }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - python
    - -m
    - pipelines.worker_pool
    - --host
    - 127.0.0.1
    - --port
    - {{ $p.sdkHarness.port | quote }}
  env:
    {{- include "streaming-analytics.envFromMap" .Values.config | trim | nindent 4 }}
    {{- include "streaming-analytics.envFromMap" $p.env | trim | nindent 4 }}
    - name: SA_MODEL_DIR
      value: {{ $p.models.mountPath | quote }}
    {{- include "streaming-analytics.secretEnv" (list . "SA_POSTGRES_DSN") | nindent 4 }}
    {{- include "streaming-analytics.secretEnv" (list . "SA_REDIS_URL") | nindent 4 }}
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
    - name: HOME
      value: /tmp
    {{- with $p.sdkHarness.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    # The TaskManager asks for workers as soon as a task starts: be listening first. A tcpSocket
    # probe would dial the pod IP, where the pool does not listen; this connects over loopback.
    exec:
      command:
        - python
        - -c
        - import socket; socket.create_connection(("127.0.0.1", {{ int $p.sdkHarness.port }}), 1).close()
    periodSeconds: 2
    timeoutSeconds: 5
    failureThreshold: 60
  resources:
    {{- toYaml $p.sdkHarness.resources | nindent 4 }}
  securityContext:
    {{- toYaml $p.securityContext | nindent 4 }}
  volumeMounts:
    - name: harness-tmp
      mountPath: /tmp
    - name: models
      mountPath: {{ $p.models.mountPath }}
      readOnly: true
{{- end }}
