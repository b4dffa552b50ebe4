"""The names in a run's folder `<project>/runs/<id>/`, in one place (the trainer's output
folder inside it has its own: studio/trainer/run_files.py).

    dataset/                  the project's pairs, exported when the run first starts
    accelerate_config.yaml    the launch config
    train.log                 everything the launch prints (the supervisor's stdout, stderr)
    exit.json                 {"code", "ended_at"}: the supervisor, when the last process ended
    nodes/                    one log and exit file per node of a multi-node run
    output/                   the trainer's output folder

The encoded-pair cache is the project's, beside its runs (<project>/encode_cache/), shared by
every run of the project: it is keyed by the pairs' content, the model and the settings.
"""
from __future__ import annotations

from pathlib import Path

DATASET = "dataset"
CONFIG = "accelerate_config.yaml"
LOG = "train.log"
EXIT = "exit.json"
NODES = "nodes"
OUTPUT = "output"


def dataset(folder: Path) -> Path:
    return Path(folder) / DATASET


def config(folder: Path) -> Path:
    return Path(folder) / CONFIG


def output(folder: Path) -> Path:
    return Path(folder) / OUTPUT


ENCODE_CACHE = "encode_cache"


def encode_cache(folder: Path) -> Path:
    """The project's cache, for the run folder <project>/runs/<id>."""
    return Path(folder).parent.parent / ENCODE_CACHE


def nodes(folder: Path) -> Path:
    return Path(folder) / NODES


def note(folder: Path, line: str) -> None:
    """A line of the studio's own in the launch log, before the run prints its own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOG).open("a", encoding="utf-8") as f:
        f.write(f"studio: {line}\n")
