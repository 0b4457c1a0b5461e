"""run commands (filled in by their issue)."""
