"""The LoRA training program, `python -m studio.trainer` (run under `accelerate launch`).

It needs a dataset folder (or parquet shards, --dataset_parquet) and a model folder, nothing
else of the studio (no UI, no store).
"""
