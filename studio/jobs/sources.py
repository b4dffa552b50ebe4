"""A project's attached source as trainer flags, for the run's launch command."""
from __future__ import annotations

from ..store import Store


def trainer_source_args(store: Store, project: str) -> list[str] | None:
    """`--dataset_parquet …` (and `--parquet_columns …`) for the project's attached parquet
    source, to add to the trainer's arguments; None when it has none (train on its pairs).

    With these flags the trainer takes its training pairs from the parquet alone; the
    --dataset_base_path it is also given (the exported pairs) then only supplies the
    validation pairs (metadata_validation.csv)."""
    source = store.sources.get(project)
    if not source or source.get("kind") != "parquet":
        return None
    args = ["--dataset_parquet", source["parquet"]]
    if source.get("columns"):
        args += ["--parquet_columns", source["columns"]]
    return args
