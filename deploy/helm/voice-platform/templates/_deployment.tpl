{{/*
The one Deployment shape every service uses. Call with (list $root $name $svc).
Shutdown: the pod turns unready and leaves the Service endpoints, preStop waits
`preStopSleepSeconds` so no new call or message is routed to it, then SIGTERM lets the
service finish in-flight work for SHUTDOWN_GRACE_S before terminationGracePeriodSeconds ends.
*/}}
{{- define "voice.deployment" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $svc := index . 2 }}
{{- $sip := and (eq $name "ingress") $root.Values.sip.enabled }}
{{- $webrtc := and (eq $name "ingress") $root.Values.webrtc.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "voice.componentName" (list $root $name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "voice.componentLabels" (list $root $name) | nindent 4 }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: {{ $root.Values.updateStrategy.maxSurge }}
      maxUnavailable: {{ $root.Values.updateStrategy.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "voice.componentSelectorLabels" (list $root $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "voice.componentLabels" (list $root $name) | nindent 8 }}
      annotations:
        checksum/secret: {{ include "voice.inlineSecrets" $root | sha256sum }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "voice.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with ($svc.nodeSelector | default $root.Values.nodeSelector) }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with ($svc.tolerations | default $root.Values.tolerations) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $root.Values.topologySpread.enabled }}
      topologySpreadConstraints:
        - topologyKey: {{ $root.Values.topologySpread.topologyKey }}
          maxSkew: {{ $root.Values.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "voice.componentSelectorLabels" (list $root $name) | nindent 14 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "voice.image" (list $root $svc) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", {{ $svc.module | quote }}]
          env:
            {{- include "voice.env" (list $root $name $svc) | trim | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ $svc.port }}
              protocol: TCP
            {{- if $sip }}
            - name: sip
              containerPort: {{ $root.Values.sip.port }}
              protocol: UDP
            {{- if $root.Values.sip.tcp }}
            - name: sip-tcp
              containerPort: {{ $root.Values.sip.port }}
              protocol: TCP
            {{- end }}
            {{- range $i := until (int $root.Values.sip.rtpPortCount) }}
            - name: rtp-{{ $i }}
              containerPort: {{ add $root.Values.sip.rtpPortStart $i }}
              protocol: UDP
            {{- end }}
            {{- end }}
            {{- if $webrtc }}
            {{- range $i := until (int $root.Values.webrtc.udpPortCount) }}
            - name: webrtc-{{ $i }}
              containerPort: {{ add $root.Values.webrtc.udpPortStart $i }}
              {{- if $root.Values.webrtc.hostPorts }}
              hostPort: {{ add $root.Values.webrtc.udpPortStart $i }}
              {{- end }}
              protocol: UDP
            {{- end }}
            {{- end }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            {{- toYaml $svc.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            {{- toYaml $svc.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            {{- toYaml $svc.probes.readiness | nindent 12 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $root.Values.preStopSleepSeconds | quote }}]
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpVolume.sizeLimit }}
{{- end }}
