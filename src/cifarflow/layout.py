"""Where things live in a workdir: one layout for ``cifarflow run`` and the pipeline's steps.

::

    WORKDIR/raw/...                          ingest's raw members + _ingest.json
    WORKDIR/datasets/<dataset-id>/...        committed datasets (content-addressed)
    WORKDIR/models/<dataset-id>/<run>/...    one model per training run (saved_model/, checkpoints/...), named
                                             by its settings or a chosen run name (cifarflow.train.runs)
    WORKDIR/models/<dataset-id>/<run>/report.html, metrics.json   the evaluation, next to the model
"""

from __future__ import annotations

from dataclasses import dataclass

from cifarflow.storage import basename, join, normalize

DATASETS = "datasets"
MODELS = "models"
MANIFEST = "_manifest.json"  # the file a dataset URL may name instead of its folder (cifarflow.data.manifest)


@dataclass(frozen=True)
class Workdir:
    url: str  # normalised, no trailing slash

    @classmethod
    def at(cls, url: str) -> Workdir:
        return cls(normalize(url).rstrip("/"))

    @property
    def ingest_dest(self) -> str:
        """What ``ingest`` is given as DEST (it writes DEST/raw)."""
        return self.url

    @property
    def datasets(self) -> str:
        return join(self.url, DATASETS)

    @property
    def models(self) -> str:
        return join(self.url, MODELS)

    def dataset(self, dataset_id: str) -> str:
        return join(self.datasets, dataset_id)


def dataset_id_of(dataset_url: str) -> str:
    """The dataset id a dataset URL names: datasets are committed as DATASETS/<dataset-id>/ (no I/O)."""
    url = dataset_url.rstrip("/")
    return basename(url[: -len(MANIFEST)] if url.endswith("/" + MANIFEST) else url)
