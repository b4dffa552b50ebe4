"""Writing instruction proposals for many pairs in the background, with progress and cancel.

The Dataset tab runs a job in a thread (InstructionJobs keeps the app's) and polls its row;
the CLI runs it in the foreground (Ctrl-C cancels). Each proposal is stored as soon as it is
written, so a cancel, a crash or a failing pair loses none of those before it. A pair whose
images cannot be read, or whose generation is empty, is named in the run's notes and skipped.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from ..dataset.proposals import pairs_to_write, style_examples
from ..engine.instruction_writer import (DEFAULT_MAX_WORDS, INSTRUCTION_PROMPT, EmptyInstruction,
                                         InstructionWriter, build_prompt, choose_vl_model)
from ..engine.savers import Savers
from ..store import Store


@dataclass
class WriteRequest:
    project: str
    model: str | None = None      # the edit model folder (its text encoder is the default VL)
    vl_model: str | None = None   # a Qwen2.5-VL / Qwen3-VL folder instead
    scope: str = "missing"        # missing | search | all (dataset.proposals.SCOPES)
    search: str | None = None
    prompt: str = INSTRUCTION_PROMPT
    max_words: int = DEFAULT_MAX_WORDS
    device: str | None = None
    dtype: object = None          # a name (bf16…) or a torch.dtype, as the engine's
    savers: Savers = field(default_factory=Savers)
    max_new_tokens: int = 64


class InstructionJob:
    """One run of the writer over a project's pairs; `run()` blocks, `start()` threads it."""

    def __init__(self, store: Store, request: WriteRequest,
                 before_load: Callable[[str], object] | None = None):
        """`before_load(device)`: called before the VL model loads (the UI frees the editor's
        pipeline there when it shares the device)."""
        self.store, self.request, self.before_load = store, request, before_load
        self.cancelled = threading.Event()
        self.job_id: int | None = None
        self.thread: threading.Thread | None = None
        # Checked now, so a wrong folder or scope fails at the click, not in the thread.
        self.vl = choose_vl_model(request.model, request.vl_model)
        self.pair_ids = pairs_to_write(store, request.project, request.scope, request.search)
        build_prompt([], request.max_words, request.prompt)  # a malformed prompt fails here

    def start(self) -> threading.Thread:
        self._open()
        self.thread = threading.Thread(target=self._work, daemon=True, name="instruction-writer")
        self.thread.start()
        return self.thread

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict:
        self._open()
        self._work(progress)
        return self.store.proposals.job(self.job_id)

    def cancel(self) -> None:
        self.cancelled.set()

    def alive(self) -> bool:
        """Whether its thread still writes."""
        return self.thread is not None and self.thread.is_alive()

    def _open(self) -> None:
        r = self.request
        self.job_id = self.store.proposals.start_job(
            r.project, self.vl.label, r.prompt, r.max_words,
            r.scope + (f": {r.search}" if r.scope == "search" else ""), len(self.pair_ids))

    def _work(self, progress: Callable[[int, int], None] | None = None) -> None:
        r, proposals = self.request, self.store.proposals
        done = failed = 0
        writer = None
        try:
            prompt = build_prompt(style_examples(self.store, r.project), r.max_words, r.prompt)
            writer = InstructionWriter(self.vl, r.device, r.dtype, r.savers, r.max_new_tokens)
            if self.before_load:
                self.before_load(writer.device)
            for pair_id in self.pair_ids:
                if self.cancelled.is_set():
                    proposals.end_job(self.job_id, "cancelled",
                                      f"cancelled after {done} of {len(self.pair_ids)} pairs; "
                                      f"the {done - failed} proposals written are kept")
                    return
                note = self._propose(writer, pair_id, prompt)
                done += 1
                failed += note is not None
                proposals.job_step(self.job_id, done, failed, note)
                if progress:
                    progress(done, len(self.pair_ids))
            proposals.end_job(self.job_id, "finished")
        except Exception as exc:  # noqa: BLE001 - the run's row must say why it stopped
            proposals.end_job(self.job_id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.release()

    def _propose(self, writer: InstructionWriter, pair_id: int, prompt: str) -> str | None:
        """Write and store one proposal; a note naming the pair when it cannot be."""
        pairs, project = self.store.pairs, self.request.project
        pair = pairs.get(project, pair_id)
        if pair is None:
            return f"pair #{pair_id}: deleted meanwhile, skipped"
        try:
            images = [_read(pairs.path(project, p))
                      for p in [pair["source_path"], *pair["extra_sources"], pair["target_path"]]]
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on a corrupt file
            return f"{pair['sample_id']}: images cannot be read ({exc}); skipped"
        try:
            text = writer.write(images[:-1], images[-1], prompt, self.request.max_words)
        except EmptyInstruction:
            return f"{pair['sample_id']}: the model generated no text; no proposal"
        self.store.proposals.add(project, self.job_id, pair_id, text)
        return None


class InstructionJobs:
    """The jobs this app writes in threads (the Dataset tab's), one per project at a time."""

    def __init__(self):
        self._jobs: dict[str, InstructionJob] = {}
        self._lock = threading.Lock()

    def start(self, job: InstructionJob) -> None:
        project = job.request.project
        with self._lock:  # two clicks at once must not start two writers
            if self.running(project):
                raise ValueError("Instructions are already being written for this project; "
                                 "cancel first.")
            job.start()
            self._jobs[project] = job

    def running(self, project: str) -> InstructionJob | None:
        """The project's job if its thread still writes."""
        job = self._jobs.get(project)
        return job if job is not None and job.alive() else None

    def writes(self, project: str, job_id: int) -> bool:
        """Whether this app's thread writes the stored job `job_id` (a job marked running that
        none here writes is a CLI's, or one a crash interrupted)."""
        job = self.running(project)
        return job is not None and job.job_id == job_id

    def cancel(self, project: str) -> bool:
        """Ask the project's job to stop after the pair in hand; False if none writes."""
        job = self.running(project)
        if job is not None:
            job.cancel()
        return job is not None


def _read(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
