"""`edit` and `edit-batch`: edits from the command line, with a progress bar."""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..engine.adapters import resolve_adapter
from ..engine.batch import BatchItem, edit_batch, folder_items
from ..engine.edit_metrics import metrics_line
from ..engine.editor import Editor
from ..engine.models import resolve_model
from ..engine import savers
from ..paths import projects_dir
from .project import open_store


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1024x768, got {text!r}") from None
    return width, height


def load_images(names: list[str]) -> list[Image.Image]:
    for name in names:
        if not Path(name).is_file():
            raise FileNotFoundError(f"input image not found: {name}")
    return [Image.open(name) for name in names]


def resolve_adapters(args, texts: list[str]):
    """Adapter ids need the store; plain files do not."""
    store = open_store(args) if any(
        t.split(":")[0].isdigit() for t in texts) else None
    return [resolve_adapter(text, store.require_adapter if store else None) for text in texts]


def add_sampler_options(p) -> None:
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; 4 on the demo)")
    p.add_argument("--cfg", type=float, default=None, help="true_cfg_scale (default 4.0)")
    p.add_argument("--size", default=None, help="output WxH (default: input aspect at the model's area)")


def add_model_options(p) -> None:
    p.add_argument("--model", default=None, help="model folder, or 'demo' (default: $STUDIO_MODEL or demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, npu, mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on accelerators, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles to save memory")
    savers.add_flags(p)


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit an image")
    add_model_options(p)
    p.add_argument("--image", action="append", required=True,
                   help="input image (repeat up to 3 times for 2509/2511 models)")
    p.add_argument("--prompt", required=True, help="the edit instruction")
    add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", action="append", default=[], metavar="ID|FILE[:STRENGTH]",
                   help="LoRA adapter to apply (repeat to stack; strength 0-2, default 1)")
    p.add_argument("--out", default=None, help="output image file")
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan of this edit and its verdict here; edit nothing")
    p.set_defaults(handler=run)

    b = sub.add_parser("edit-batch", help="edit every image of a folder, or a project's pairs")
    add_model_options(b)
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", help="a folder of images; a <name>.txt beside an image "
                                            "holds its own instruction")
    source.add_argument("--project", help="a project's pairs, each with its instruction")
    b.add_argument("--split", choices=["train", "validation"], default=None,
                   help="with --project: only this split")
    b.add_argument("--prompt", default=None, help="instruction for images without a .txt")
    add_sampler_options(b)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--adapter", action="append", default=[], metavar="ID|FILE[:STRENGTH]")
    b.add_argument("--out-dir", required=True,
                   help="outputs <name>.png and index.jsonl (with --project: each edit's metrics "
                        "against its pair, and a summary line per adapter)")
    b.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    b.set_defaults(handler=run_batch)


def make_editor(args) -> Editor:
    model = resolve_model(args.model, projects_dir(args.projects_dir))
    return Editor(model, device=args.device, dtype=args.dtype, vae_tiling=args.vae_tiling,
                  cpu_offload=args.cpu_offload, savers=savers.Savers.of(args))


def run(args) -> int:
    images = load_images(args.image)
    editor = make_editor(args)
    if args.plan:
        size = parse_size(args.size) or editor.default_size(images[-1])
        plan, verdict = editor.memory_plan(size, len(images))
        print("\n".join(plan.lines()))
        print(("" if verdict.fits else "WILL NOT FIT: ") + verdict.message)
        return 0 if verdict.fits else 1
    if not args.out:
        raise SystemExit("studio edit: --out is required (or --plan)")
    adapters = resolve_adapters(args, args.adapter)
    if editor.info.is_demo:
        print("note: the demo model has random weights; its output is noise. Use --model PATH for real weights.")
    with tqdm(desc="editing", unit="step") as bar:
        def progress(step, total):
            bar.total = total
            bar.update(step - bar.n)

        result = editor.edit(images, args.prompt, args.negative, seed=args.seed, steps=args.steps,
                             true_cfg_scale=args.cfg, size=parse_size(args.size), progress=progress,
                             adapters=adapters)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(out)
    print(f"wrote {out} ({result.image.width}x{result.image.height}, {result.seconds:.1f}s)")
    return 0


def pair_item(pairs, project: str, pair: dict) -> BatchItem:
    """A dataset pair as an edit: its sources, instruction and target."""
    return BatchItem(pair["sample_id"], [pairs.path(project, r)
                                         for r in [pair["source_path"], *pair["extra_sources"]]],
                     pair["instruction"] or "", pairs.path(project, pair["target_path"]))


def project_items(args) -> list[BatchItem]:
    pairs = open_store(args).pairs
    return [pair_item(pairs, args.project, p) for p in pairs.iterate(args.project, split=args.split)]


def run_batch(args) -> int:
    if args.project:
        items, problems = project_items(args), []
    else:
        items, problems = folder_items(args.input_dir, args.prompt)
    if not items:
        raise ValueError("nothing to edit" + (f": {problems[0][1]}" if problems else ""))
    adapters = resolve_adapters(args, args.adapter)
    editor = make_editor(args)
    with tqdm(total=len(items), desc="editing", unit="image") as bar:
        report = edit_batch(editor, items, args.out_dir, overwrite=args.overwrite,
                            progress=lambda done, total: bar.update(done - bar.n),
                            negative_prompt=args.negative, seed=args.seed, steps=args.steps,
                            true_cfg_scale=args.cfg, size=parse_size(args.size), adapters=adapters)
    errors = problems + report.errors
    for name, reason in errors:
        print(f"skipped {name}: {reason}")
    for summary in report.summaries:
        names = " + ".join(f"{a['label']} @ {a['strength']:g}" for a in summary["adapters"]) or "base"
        print(f"{names}, mean of {summary['scored']} scored: {metrics_line(summary['metrics'])}")
    print(f"wrote {len(report.written)} edit(s) to {args.out_dir} in {report.seconds:.1f}s"
          f" ({report.skipped} already there, {len(errors)} failed)")
    return 1 if errors else 0
