"""k8s commands (filled in by their issue)."""
