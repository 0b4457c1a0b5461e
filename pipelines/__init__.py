"""KFP wiring of cifarflow (components and the pipeline). The logic lives in ``src/cifarflow``.

The CLI loads this folder by path (see :mod:`cifarflow.pipeline.definition`): from a source checkout, from the
pipeline image (which copies it and sets ``CIFARFLOW_PIPELINES_DIR``), or from a wheel built with a copy.
"""
