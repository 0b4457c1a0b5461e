"""The KFP pipeline's library side: step logic, compile/submit/run-local, ``--param`` parsing.

The KFP wiring itself (components and the ``@dsl.pipeline``) is in the top-level ``pipelines/`` folder;
:mod:`cifarflow.pipeline.definition` says how it is found.
"""
