"""KFP wiring of cifarflow (components and the pipeline). The logic lives in ``src/cifarflow``.

The CLI loads this folder by path (see :mod:`cifarflow.pipeline.definition`), so it works from a source
checkout, from the pipeline image, and from an installed wheel, which carries a copy of it.
"""
