"""Serving a trained model: the V2 inference protocol (``server``), the promotion gate (``promote``)."""
