"""The import entry points the CLI and the Dataset tab call; each returns an ImportReport."""
from __future__ import annotations

from pathlib import Path

from ..store import Store
from .checks import DEFAULT_MAX_PIXELS
from .ingest import Progress, ingest
from .metadata import metadata_candidates
from .pairing import fileset_candidates
from .parquet_import import ParquetImport, parse_min_scores
from .report import ImportReport
from .sources import Candidate, FileSet, FolderFiles, ListFiles, ZipFiles, path_ref


def _run(store: Store, project: str, candidates, report: ImportReport, progress: Progress | None,
         max_pixels: int, total: int | None = None) -> ImportReport:
    total = len(candidates) if total is None and hasattr(candidates, "__len__") else total
    return ingest(store, project, candidates, report, total=total, progress=progress,
                  max_pixels=max_pixels)


def import_pair(store: Store, project: str, source: str | Path, target: str | Path,
                instruction: str, sample_id: str | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImportReport:
    report = ImportReport()
    candidate = Candidate(row="pair", source=path_ref(source), target=path_ref(target),
                          instruction=instruction, sample_id=sample_id,
                          meta={"origin": "upload"})
    return _run(store, project, [candidate], report, None, max_pixels)


def import_fileset(store: Store, project: str, files: FileSet, progress: Progress | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> ImportReport:
    report = ImportReport()
    candidates = fileset_candidates(files, report)
    if not candidates and not report.errors:
        report.notes.append(f"{files.label}: no pairs found")
    return _run(store, project, candidates, report, progress, max_pixels)


def import_folder(store: Store, project: str, folder: str | Path, allow_local_paths: bool = False,
                  **options) -> ImportReport:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    return import_fileset(store, project, FolderFiles(folder, local_paths=allow_local_paths), **options)


def import_zip(store: Store, project: str, path: str | Path, **options) -> ImportReport:
    if not Path(path).is_file():
        raise FileNotFoundError(f"zip file not found: {path}")
    return import_fileset(store, project, ZipFiles(path), **options)


def import_files(store: Store, project: str, paths: list[str | Path], **options) -> ImportReport:
    return import_fileset(store, project, ListFiles(paths), **options)


def _beside(path: Path, allow_local_paths: bool) -> FolderFiles:
    """What a table file on disk may name: files under its folder; with allow_local_paths
    (only the CLI sets it: its user reads their own files) any local file."""
    return FolderFiles(path.parent, names=[path.name], local_paths=allow_local_paths)


def import_metadata(store: Store, project: str, path: str | Path, progress: Progress | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, allow_local_paths: bool = False) -> ImportReport:
    """A metadata_edit.csv, or DiffSynth/musubi JSON or JSONL; paths relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    report = ImportReport()
    files = _beside(path, allow_local_paths)
    candidates = metadata_candidates(files, path.name, report)
    return _run(store, project, candidates, report, progress, max_pixels)


def import_parquet(store: Store, project: str, path: str | Path, allow_local_paths: bool = False,
                   **options) -> ImportReport:
    path = Path(path)
    return _import_parquet(store, project, path, _beside(path, allow_local_paths), **options)


def _import_parquet(store: Store, project: str, path: Path, files: FileSet, columns: str | None = None,
                    limit: int | None = None, offset: int = 0, min_scores: list[str] | dict | None = None,
                    progress: Progress | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImportReport:
    """Parquet rows; a path in an image cell may name only one of `files`."""
    report = ImportReport()
    if not isinstance(min_scores, dict):
        min_scores = parse_min_scores(min_scores)
    rows = ParquetImport(path, report, files, columns=columns, limit=limit, offset=offset,
                         min_scores=min_scores)
    return _run(store, project, rows, report, progress, max_pixels, total=rows.total)


def import_uploads(store: Store, project: str, paths: list[str | Path], **options) -> ImportReport:
    """What the Dataset tab's upload box gets: one zip or parquet file, or many files.

    A table among them (or in the zip, or a parquet's path cells) names only files of the
    same upload, never a path on the server: nothing here reads local paths."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no files given")
    kinds = {p.suffix.lower() for p in paths}
    if kinds & {".zip", ".parquet"}:
        if len(paths) > 1:
            raise ValueError("upload a zip or a parquet file on its own, not mixed with other files")
        if kinds == {".parquet"}:
            return _import_parquet(store, project, paths[0], ListFiles(paths), **options)
        return import_zip(store, project, paths[0], **_no_parquet(options))
    return import_files(store, project, paths, **_no_parquet(options))


def _no_parquet(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in ("progress", "max_pixels")}
