"""KFP wiring of cifarflow (components and the pipeline). The logic lives in ``src/cifarflow``.

A regular package, ``pipelines``: the CLI imports it from a source checkout, or from the folder
``CIFARFLOW_PIPELINES_DIR`` names (the pipeline image copies it to /opt/cifarflow/pipelines); see
:mod:`cifarflow.pipeline.definition`.
"""
