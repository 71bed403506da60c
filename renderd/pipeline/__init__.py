"""JSON pipelines: read, optimize, reproject, ingest, pyramid and write as
one checked, streaming, resumable job (``renderd-py pipeline``).

``spec`` holds the table of stage types (what each takes and gives, its
fields); ``parse`` checks a pipeline file into stages; ``plan`` says what a
run would do (``--dry-run``); ``engine`` runs the stages as threads joined
by bounded queues; ``stages`` holds the adapters over the tools
(``optimize-rasters``, ``ingest``, ``seed``, ``export``).
"""

from .parse import Flow, Pipeline, check_config, load, parse
from .spec import TYPES, Stage

__all__ = ["Flow", "Pipeline", "Stage", "TYPES", "check_config", "load", "parse"]
