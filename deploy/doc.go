// Package deploy holds the container image and Kubernetes manifests of the worker and the
// starter, and the tests that keep them valid: deploy/Dockerfile, deploy/k8s (kustomize base and
// overlays). See docs/deploy.md.
package deploy
