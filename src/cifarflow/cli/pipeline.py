"""pipeline commands (filled in by their issue)."""
