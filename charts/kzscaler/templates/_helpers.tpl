{{/* The image reference of a component: image.registry/<name>:<tag or appVersion>. */}}
{{- define "kzscaler.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
