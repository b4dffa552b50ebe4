"""Writing a project's pairs as a training dataset folder.

seed       metadata_edit.csv (image, edit_image, prompt, sample_id) + images/. `image` is the
           EDITED file (the training target) and `edit_image` the SOURCE file: that is how
           DiffSynth-Studio's UnifiedDataset (and the studio's trainer) read these columns.
diffsynth  metadata.jsonl with the same keys; `edit_image` is a list when a pair has 2-3 inputs.
aitoolkit  targets/<id>.<ext> with targets/<id>.txt captions, control/<id>.<ext> (control_2/,
           control_3/ for extra inputs).
musubi     metadata.jsonl with image_path, control_path (control_path_0… for several inputs), caption.

Instructions are written verbatim: standard CSV quoting for commas, quotes and newlines,
UTF-8, and no prefix or escape for text starting with = + - @. This is training data read by
a trainer, not a spreadsheet: an escaped instruction would be learned as altered text.
Validation pairs go to separate files (metadata_validation.*, validation/), so a trainer
given the main file never sees them. Pairs with errors are left out and counted.
"""
from __future__ import annotations

import csv
import json
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..store import Store

FORMATS = ("recipe", "diffsynth", "aitoolkit", "musubi")
FORMAT_ALIASES = {"seed": "recipe"}  # the name users know the reference recipe by
RECIPE_COLUMNS = ["image", "edit_image", "prompt", "sample_id"]


@dataclass
class ExportResult:
    out: Path
    format: str
    pairs: int = 0
    validation_pairs: int = 0
    skipped_errors: int = 0
    linked: int = 0                 # images hard-linked from the store
    copied: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"wrote {self.pairs} training pairs and {self.validation_pairs} validation pairs "
                f"to {self.out} ({self.format} layout)")
        if self.skipped_errors:
            text += f"; left out {self.skipped_errors} pairs with errors (see dataset validate)"
        return text


class MissingImage(FileNotFoundError):
    """A pair's stored image file is gone; the message names the pair."""


def link_or_copy(source: str, destination: str, link: bool) -> str | None:
    """A hard link where asked and possible, else a copy; returns why a link failed."""
    if link:
        try:
            os.link(source, destination)
            return None
        except FileNotFoundError:  # the stored file is gone: a copy cannot help
            raise
        except OSError as exc:  # another filesystem, or one without links
            reason = exc.strerror or type(exc).__name__
        shutil.copyfile(source, destination)
        return reason
    shutil.copyfile(source, destination)
    return None


# Pair columns the export reads: no issues or meta to decode per pair.
_COLUMNS = ["sample_id", "split", "status", "source_path", "target_path", "extra_sources",
            "instruction"]


class _Writer:
    """Per-format writing of one pair; `close` finishes the metadata files."""

    def __init__(self, fmt: str, out: Path, store: Store, project: str, link: bool = False):
        self.fmt, self.out, self.store, self.project, self.link = fmt, out, store, project, link
        self.linked, self.copied, self.link_failure = 0, 0, None
        self.files: dict[str, object] = {}
        self.csv: dict[str, csv.writer] = {}
        # Plain strings and each folder made once: at 100,000 pairs, pathlib objects and a
        # mkdir per image cost more than the links themselves.
        self.images, self.folder = str(store.project_dir(project)), str(out)
        self.made: set[str] = set()

    def _stream(self, split: str):
        suffix = "edit" if split == "train" else "validation"
        if self.fmt == "recipe":
            name = f"metadata_{suffix}.csv"
        else:
            name = "metadata.jsonl" if split == "train" else "metadata_validation.jsonl"
        if name not in self.files:
            # newline="" lets the csv module write the line endings (and quoted newlines) itself.
            self.files[name] = open(self.out / name, "w", encoding="utf-8", newline="")
            if self.fmt == "recipe":
                self.csv[name] = csv.writer(self.files[name], lineterminator="\n")
                self.csv[name].writerow(RECIPE_COLUMNS)
        return name

    def _copy(self, relative: str, name: str) -> str:
        """A stored image as out/name(.ext); returns the POSIX path relative to out."""
        dot = relative.rfind(".")
        placed = name + (relative[dot:] if dot > relative.rfind("/") + 1 else "")  # the extension
        parent = name.rpartition("/")[0]
        if parent not in self.made:
            os.makedirs(os.path.join(self.folder, parent), exist_ok=True)
            self.made.add(parent)
        failure = link_or_copy(f"{self.images}/{relative}", f"{self.folder}/{placed}", self.link)
        if self.link and failure is None:
            self.linked += 1
        else:
            self.copied += 1
            self.link_failure = self.link_failure or failure
        return placed

    def write(self, pair: dict) -> None:
        sid, split = pair["sample_id"], pair["split"]
        copy = self._copy
        if self.fmt == "aitoolkit":
            base = "" if split == "train" else "validation/"
            target = copy(pair["target_path"], f"{base}targets/{sid}")
            (self.out / (posixpath.splitext(target)[0] + ".txt")).write_text(
                pair["instruction"], encoding="utf-8")
            copy(pair["source_path"], f"{base}control/{sid}")
            for n, extra in enumerate(pair["extra_sources"], 2):
                copy(extra, f"{base}control_{n}/{sid}")
            return
        target = copy(pair["target_path"], f"images/edited_{sid}")
        sources = [copy(pair["source_path"], f"images/source_{sid}")]
        sources += [copy(extra, f"images/source_{sid}_{n}") for n, extra in enumerate(pair["extra_sources"], 2)]
        name = self._stream(split)
        if self.fmt == "recipe":
            self.csv[name].writerow([target, sources[0], pair["instruction"], sid])
        elif self.fmt == "diffsynth":
            record = {"image": target, "edit_image": sources if len(sources) > 1 else sources[0],
                      "prompt": pair["instruction"], "sample_id": sid}
            self.files[name].write(json.dumps(record, ensure_ascii=False) + "\n")
        else:  # musubi: absolute paths, as its examples use, so any working directory works
            record = {"image_path": str((self.out / target).resolve())}
            absolute = [str((self.out / s).resolve()) for s in sources]
            if len(absolute) == 1:
                record["control_path"] = absolute[0]
            else:
                record.update({f"control_path_{i}": p for i, p in enumerate(absolute)})
            record["caption"] = pair["instruction"]
            self.files[name].write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.fmt == "recipe" and "metadata_edit.csv" not in self.files:
            self._stream("train")  # an empty dataset still gets its header
        for handle in self.files.values():
            handle.close()


def export_dataset(store: Store, project: str, out: str | Path, fmt: str = "recipe",
                   overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                   link: bool = False) -> ExportResult:
    """`link`: hard-link the images (a run's own folder, on this machine: the store's images
    are content-addressed and never change) and copy only where links fail."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; choose a new folder (or pass --force to write into it)")
    out.mkdir(parents=True, exist_ok=True)
    pairs = store.pairs
    total = pairs.count(project)
    result = ExportResult(out, fmt)
    writer = _Writer(fmt, out, store, project, link)
    extra_inputs = 0
    try:
        for done, pair in enumerate(pairs.iterate(project, batch=5000, columns=_COLUMNS), 1):
            if pair["status"] == "error":
                result.skipped_errors += 1
            else:
                try:
                    writer.write(pair)
                except FileNotFoundError as exc:
                    # Fail loudly, naming the pair: a run must not train on a dataset with a
                    # pair left out (or half written) because its file vanished.
                    raise MissingImage(f"pair {pair['id']} ({pair['sample_id']}): an image file "
                                       f"is missing: {exc.filename}; run dataset validate, "
                                       f"then fix or delete the pair") from None
                extra_inputs += bool(pair["extra_sources"])
                if pair["split"] == "train":
                    result.pairs += 1
                else:
                    result.validation_pairs += 1
            if progress:
                progress(done, total)
    finally:
        writer.close()
    result.linked, result.copied = writer.linked, writer.copied
    if link and writer.copied:
        result.notes.append(f"copied {writer.copied} images: hard links failed "
                            f"({writer.link_failure}; the dataset is on another filesystem?)")
    if extra_inputs and fmt == "recipe":
        result.notes.append(f"{extra_inputs} pairs have 2-3 input images; metadata_edit.csv lists "
                            "only the first (images/source_<id>.*). Use --format diffsynth for all.")
    return result
