"""train commands (filled in by their issue)."""
