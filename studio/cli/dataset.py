"""`dataset import | validate | export | list | samples | instructions | encode | cache`:
curate edit pairs without a browser."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from tqdm import tqdm

from ..dataset import importers, proposals
from ..dataset.checks import DEFAULT_MAX_PIXELS
from ..dataset.export import FORMAT_ALIASES, FORMATS, export_dataset
from ..dataset.instructions import Rewrite, rewrite_instructions
from ..dataset.synthetic_pairs import add_synthetic_pairs
from ..dataset.split import hold_out, parse_count
from ..dataset.validate import validate_project
from ..engine.instruction_writer import DEFAULT_MAX_WORDS, INSTRUCTION_PROMPT
from ..engine.models import resolve_model
from ..engine.savers import Savers
from ..jobs import encode_cache, planning
from ..jobs.instruction_writing import InstructionJob, WriteRequest
from ..jobs.presets import TRAIN_PRESETS
from .project import open_store
from .train import options


def register(sub) -> None:
    p = sub.add_parser("dataset", help="import, validate, browse and export edit pairs")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    imp = verbs.add_parser("import", help="add pairs to a project")
    imp.add_argument("--project", required=True)
    what = imp.add_mutually_exclusive_group(required=True)
    what.add_argument("--pairs", metavar="DIR", help="folder of files paired by name (or holding metadata)")
    what.add_argument("--zip", metavar="FILE", help="zip of files paired by name (or holding metadata)")
    what.add_argument("--csv", metavar="FILE", help="metadata_edit.csv, or DiffSynth/musubi JSON/JSONL")
    what.add_argument("--parquet", metavar="FILE", help="UltraEdit / InstructPix2Pix / MagicBrush parquet")
    what.add_argument("--files", nargs="+", metavar="FILE", help="several image and instruction files")
    what.add_argument("--source", metavar="FILE", help="one pair: the source image (with --target)")
    imp.add_argument("--target", metavar="FILE", help="one pair: the edited image")
    imp.add_argument("--instruction", default=None, help="one pair: the instruction")
    imp.add_argument("--limit", type=int, default=None, help="parquet: read at most N rows")
    imp.add_argument("--offset", type=int, default=0, help="parquet: skip the first N rows")
    imp.add_argument("--columns", default=None, help="parquet: source=COL,target=COL,prompt=COL[,id=COL]")
    imp.add_argument("--min-score", action="append", metavar="COL=X",
                     help="parquet: keep rows whose COL >= X (repeatable)")
    add_max_pixels(imp)
    imp.set_defaults(handler=run_import)

    val = verbs.add_parser("validate", help="re-check every pair; exit 1 if any has errors")
    val.add_argument("--project", required=True)
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    add_max_pixels(val)
    val.set_defaults(handler=run_validate)

    exp = verbs.add_parser("export", help="write the pairs as a training dataset folder")
    exp.add_argument("--project", required=True)
    exp.add_argument("--out", required=True, metavar="DIR")
    exp.add_argument("--format", choices=FORMATS, default="recipe",
                     type=lambda name: FORMAT_ALIASES.get(name, name),
                     help="recipe (metadata_edit.csv, what the reference recipe reads; 'seed' "
                          "also works; the default), diffsynth, aitoolkit, musubi")
    exp.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    exp.set_defaults(handler=run_export)

    lst = verbs.add_parser("list", help="pair counts per project, or one page of a project's pairs")
    lst.add_argument("--project", default=None)
    lst.add_argument("--search", default=None, help="only instructions containing this text")
    lst.add_argument("--page", type=int, default=1)
    lst.add_argument("--page-size", type=int, default=50)
    lst.set_defaults(handler=run_list)

    smp = verbs.add_parser("synthetic", aliases=["samples"],
                           help="add a few synthetic pairs to try training at once")
    smp.add_argument("--project", required=True)
    smp.add_argument("--count", type=int, default=8)
    smp.set_defaults(handler=run_synthetic)

    spl = verbs.add_parser("split", help="hold random training pairs out for validation")
    spl.add_argument("--project", required=True)
    spl.add_argument("--validation", required=True, metavar="N|PCT",
                     help="how many training pairs to hold out: a count or a percentage (10%%)")
    spl.add_argument("--seed", type=int, default=0, help="the same seed draws the same pairs")
    spl.set_defaults(handler=run_split)

    ins = verbs.add_parser("instructions", help="rewrite many instructions (prefix, suffix, "
                                                "replace), or write them from the images (--write)")
    ins.add_argument("--project", required=True)
    ins.add_argument("--prefix", default="", help='put in front, once (e.g. "sks style, ")')
    ins.add_argument("--suffix", default="", help="put at the end, once")
    ins.add_argument("--replace", nargs=2, metavar=("OLD", "NEW"), default=("", ""))
    ins.add_argument("--search", default=None, help="only instructions containing this text")
    ins.add_argument("--dry-run", nargs="?", const=True, default=False, metavar="OUT.jsonl",
                     help="show what would change; with --write, store the proposals for "
                          "review and write them to OUT.jsonl")
    instruction_writer_flags(ins)
    ins.set_defaults(handler=run_instructions)

    enc = verbs.add_parser("encode", help="encode the pairs for a model before any run (a run "
                                          "with the same settings then encodes nothing)")
    enc.add_argument("--project", required=True)
    add_encoding_flags(enc)
    enc.set_defaults(handler=run_encode)

    cache = verbs.add_parser("cache", help="the project's encode cache: how much is encoded, "
                                           "prune entries no pair uses, clear it")
    cache.add_argument("--project", required=True)
    add_encoding_flags(cache)
    action = cache.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true",
                        help="pairs encoded for the model and settings (default; reads every image)")
    action.add_argument("--prune", action="store_true", help="delete entries no current pair uses")
    action.add_argument("--clear", action="store_true",
                        help="delete the cache (only --model's part with --model)")
    cache.set_defaults(handler=run_cache)


def instruction_writer_flags(p) -> None:
    g = p.add_argument_group("writing instructions from the images (a vision-language model)")
    g.add_argument("--write", action="store_true",
                   help="propose each pair's instruction from its source and target; without "
                        "--dry-run the proposals are applied at once")
    scope = g.add_mutually_exclusive_group()
    scope.add_argument("--missing", dest="scope", action="store_const", const="missing",
                       help="pairs with no instruction (default)")
    scope.add_argument("--all", dest="scope", action="store_const", const="all", help="every pair")
    g.add_argument("--apply", metavar="FILE", help="apply a reviewed --dry-run file")
    g.add_argument("--undo", metavar="SAMPLE_ID", help="put back a pair's previous instruction")
    g.add_argument("--overwrite", action="store_true",
                   help="let proposals replace instructions a person wrote")
    g.add_argument("--model", default=None, help="the edit model folder or 'demo' (default: "
                                                 "demo); its text_encoder writes if it has lm_head")
    g.add_argument("--vl-model", default=None, metavar="DIR",
                   help="a local Qwen2.5-VL / Qwen3-VL folder to write with instead")
    g.add_argument("--prompt-file", default=None, metavar="FILE",
                   help="the prompt asking for the instruction ({examples}, {max_words})")
    g.add_argument("--max-words", type=int, default=DEFAULT_MAX_WORDS)
    g.add_argument("--device", default=None, help="cpu, cuda, npu (default: the best there is)")
    g.add_argument("--dtype", default=None, choices=["auto", "bf16", "fp16", "fp32"])
    g.add_argument("--fp8-text-encoder", action="store_true")
    g.add_argument("--text-encoder-offload", action="store_true")


def add_encoding_flags(p) -> None:
    """The run settings that decide the encodings, as `studio train` names them."""
    p.add_argument("--model", default=None, help="model folder or 'demo' (default: demo)")
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="Demo on CPU",
                   help="the run settings to encode for (default: Demo on CPU)")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=None,
                   help="target area (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu, cuda or npu (default: the preset's)")
    p.add_argument("--mixed-precision", dest="mixed_precision", default=None,
                   choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--no-edit-image-auto-resize", dest="edit_image_auto_resize",
                   action="store_false", default=None,
                   help="keep the edit image at the target's sizing instead of ~1 MP")
    p.add_argument("--fp8-text-encoder", dest="fp8_text_encoder", action="store_true", default=None)
    p.add_argument("--text-encoder-offload", dest="text_encoder_offload", action="store_true",
                   default=None)


def _encoding_options(args):
    """`studio train`'s options rule over these flags (the model: demo unless given)."""
    opts = options(argparse.Namespace(**{**vars(args), "model": args.model or "demo"}))
    if args.edit_image_auto_resize is not None:
        opts = dataclasses.replace(opts, edit_image_auto_resize=args.edit_image_auto_resize)
    return opts


def add_max_pixels(p) -> None:
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"training resolution cap used for size warnings (default {DEFAULT_MAX_PIXELS})")


class _Bar:
    """A tqdm bar fed by (done, total) callbacks."""

    def __init__(self, desc: str):
        self.bar = tqdm(desc=desc, unit="row")

    def __call__(self, done: int, total: int | None) -> None:
        if total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run_import(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    bar = _Bar("importing")
    options = {"progress": bar, "max_pixels": args.max_pixels}
    # Tables may name any local file (absolute paths, `..`): they are the files of the user
    # running the CLI. The browser's uploads never get this.
    local = {"allow_local_paths": True}
    try:
        if args.source:
            if not args.target or args.instruction is None:
                raise ValueError("one pair needs --source, --target and --instruction")
            report = importers.import_pair(store, args.project, args.source, args.target,
                                           args.instruction, max_pixels=args.max_pixels)
        elif args.pairs:
            report = importers.import_folder(store, args.project, args.pairs, **local, **options)
        elif args.zip:
            report = importers.import_zip(store, args.project, args.zip, **options)
        elif args.csv:
            report = importers.import_metadata(store, args.project, args.csv, **local, **options)
        elif args.files:
            report = importers.import_files(store, args.project, args.files, **options)
        else:
            report = importers.import_parquet(store, args.project, args.parquet, columns=args.columns,
                                              limit=args.limit, offset=args.offset,
                                              min_scores=args.min_score, **local, **options)
    finally:
        bar.close()
    for line in report.lines():
        print(line)
    return 1 if report.errors else 0


def run_validate(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    bar = _Bar("validating") if not args.json else None
    try:
        report = validate_project(store, args.project, args.max_pixels, progress=bar)
    finally:
        if bar:
            bar.close()
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        for problem in report.problems:
            print(f"{problem['level']}: {problem['sample_id']} (#{problem['id']}): {problem['message']}")
        print(report.summary())
    return 1 if report.errors else 0


def run_export(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    bar = _Bar("exporting")
    try:
        result = export_dataset(store, args.project, args.out, args.format, overwrite=args.force,
                                progress=bar)
    finally:
        bar.close()
    for note in result.notes:
        print(f"note: {note}")
    print(result.summary())
    return 0


def run_list(args) -> int:
    store = open_store(args)
    if not args.project:
        for project in store.list_projects():
            counts = store.pairs.counts(project["name"])
            print(f"{project['name']}\t{counts['total']} pairs\t{counts['validation']} validation\t"
                  f"{counts['warning']} warnings\t{counts['error']} errors")
        return 0
    total = store.pairs.count(args.project, search=args.search)
    rows = store.pairs.page(args.project, page=args.page - 1, page_size=args.page_size, search=args.search)
    for row in rows:
        print("\t".join([str(row["id"]), row["sample_id"], row["split"], row["status"],
                         json.dumps(row["instruction"], ensure_ascii=False)]))
    pages = max(1, -(-total // args.page_size))
    print(f"page {args.page} of {pages} ({total} pairs)")
    return 0


def run_synthetic(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    report = add_synthetic_pairs(store, args.project, args.count)
    for line in report.lines():
        print(line)
    return 0


def run_instructions(args) -> int:
    if args.write or args.apply or args.undo:
        return run_instruction_writer(args)
    if isinstance(args.dry_run, str):
        raise ValueError("--dry-run OUT.jsonl goes with --write")
    rewrite = Rewrite(args.prefix, args.suffix, *args.replace)
    changes = rewrite_instructions(open_store(args), args.project, rewrite, args.search, args.dry_run)
    for sample_id, old, new in changes[:20]:
        print(f"{sample_id}: {old!r} -> {new!r}")
    if len(changes) > 20:
        print(f"… and {len(changes) - 20} more")
    print(f"{len(changes)} instruction(s) {'would change' if args.dry_run else 'changed'}")
    return 0


def run_instruction_writer(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    if args.undo:
        pair = store.pairs.find(args.project, args.undo)
        if pair is None:
            raise ValueError(f"project {args.project!r} has no pair {args.undo!r}")
        print(proposals.undo(store, args.project, pair["id"]))
        return 0
    if args.apply:
        print(proposals.apply_review_file(store, args.project, args.apply, args.overwrite).summary())
        return 0
    if args.dry_run is True:
        raise ValueError("with --write, --dry-run needs the file to write: --dry-run OUT.jsonl")
    request = WriteRequest(
        args.project, model=str(resolve_model(args.model, store.root)), vl_model=args.vl_model,
        scope="search" if args.search else args.scope or "missing", search=args.search,
        prompt=Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file
        else INSTRUCTION_PROMPT, max_words=args.max_words, device=args.device, dtype=args.dtype,
        savers=Savers(fp8_text_encoder=args.fp8_text_encoder,
                      text_encoder_offload=args.text_encoder_offload))
    job = InstructionJob(store, request)
    print(f"writing instructions for {len(job.pair_ids)} pair(s) with {job.vl.label}")
    if job.vl.is_demo:
        print("note: the demo model has random weights, so its instructions are nonsense")
    bar = _Bar("proposing")
    try:
        result = job.run(progress=bar)
    except KeyboardInterrupt:  # the proposals stored so far stay
        job.cancel()
        result = store.proposals.job(job.job_id)
        store.proposals.end_job(job.job_id, "cancelled", "interrupted (Ctrl-C)")
    finally:
        bar.close()
    for note in result["notes"]:
        print(f"note: {note}")
    written = result["done"] - result["failed"]
    print(f"{written} proposal(s) written; run {result['status']}"
          + (f": {result['error']}" if result.get("error") else ""))
    if args.dry_run:
        count = proposals.write_review_file(store, args.project, args.dry_run)
        print(f"{count} pending proposal(s) written to {args.dry_run}; edit 'proposed' or set "
              f"'decision' to reject, then: dataset instructions --project {args.project} "
              f"--apply {args.dry_run}")
    else:
        ids = [p["id"] for p in store.proposals.pending(args.project, limit=10**9)
               if p["job_id"] == job.job_id]
        print(proposals.accept(store, args.project, dict.fromkeys(ids), args.overwrite).summary())
    return 0 if result["status"] == "finished" else 1


def run_split(args) -> int:
    store = open_store(args)
    count = parse_count(args.validation, store.pairs.count(args.project, split="train"))
    chosen = hold_out(store, args.project, count, args.seed)
    counts = store.pairs.counts(args.project)
    print(f"held out {len(chosen)} pair(s): now {counts['train']} for training, "
          f"{counts['validation']} for validation")
    return 0


def run_encode(args) -> int:
    store = open_store(args)
    opts = _encoding_options(args)
    child = encode_cache.pre_encode(store, args.project, opts)
    bar = tqdm(desc="encoding", unit="pair")
    try:
        while child.poll() is None:
            _show(bar, encode_cache.progress(store, args.project))
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping (what is encoded stays cached)")
        encode_cache.stop(store, args.project)
        child.wait()
    finally:
        done = encode_cache.progress(store, args.project)
        _show(bar, done)
        bar.close()
    if done["state"] == "failed":
        print(f"encoding failed: {done['error']}")
        return 1
    print(f"encoded {done['encoded']} pair(s); {done['cached'] or 0} already cached "
          f"(of {done['pairs']} pairs)")
    return 0


def _show(bar, progress: dict) -> None:
    if progress["to_encode"] is not None and bar.total != progress["to_encode"]:
        bar.total = progress["to_encode"]
        bar.refresh()
    bar.update(progress["encoded"] - bar.n)


def run_cache(args) -> int:
    store = open_store(args)
    store.require_project(args.project)
    if args.prune:
        pruned = encode_cache.prune(store, args.project)
        print(f"removed {pruned['removed']} entries no pair uses ({pruned['bytes'] / 2**20:.1f} MB); "
              f"kept {pruned['kept']}")
    elif args.clear:
        model = planning.model_folder(store, args.model) if args.model else None
        freed = encode_cache.clear(store, args.project, model)
        print(f"cleared the encode cache of {args.project}"
              + (f" for {args.model}" if args.model else "") + f": {freed / 2**20:.1f} MB freed")
    else:
        opts = _encoding_options(args)
        counted = encode_cache.status(store, args.project,
                                      planning.model_folder(store, opts.model), opts)
        print(encode_cache.status_line(counted, opts.model))
    return 0
