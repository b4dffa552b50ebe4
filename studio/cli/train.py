"""`train` and `runs …`: training jobs without a browser."""
from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from ..jobs.manager import JobManager
from ..jobs.launch import TRAIN_PRESETS, TrainOptions
from ..trainer import scoreboard
from .project import open_store

# CLI flag -> TrainOptions field, for the options passed straight through.
OPTION_FLAGS = {
    "--max-steps": ("max_steps", int), "--save-steps": ("save_steps", int),
    "--checkpoints": ("num_checkpoints", int), "--keep-checkpoints": ("keep_checkpoints", int),
    "--keep-best-by": ("keep_best_by", str),
    "--report-to": ("report_to", str),
    "--num-epochs": ("num_epochs", int), "--lora-rank": ("lora_rank", int),
    "--lora-alpha": ("lora_alpha", float), "--learning-rate": ("learning_rate", float),
    "--lr-scheduler": ("lr_scheduler", str), "--lr-warmup-steps": ("lr_warmup_steps", int),
    "--weight-decay": ("weight_decay", float), "--max-grad-norm": ("max_grad_norm", float), "--max-pixels": ("max_pixels", int),
    "--dataset-repeat": ("dataset_repeat", int), "--seed": ("seed", int),
    "--gradient-accumulation-steps": ("gradient_accumulation_steps", int),
    "--mixed-precision": ("mixed_precision", str), "--device": ("device", str),
    "--mode": ("mode", str), "--devices-per-node": ("processes_per_node", int),
    "--nodes": ("num_machines", int), "--node-rank": ("machine_rank", int),
    "--main-ip": ("main_ip", str), "--main-port": ("main_port", int),
    "--launcher": ("launcher", str), "--hosts": ("hosts", str),
    "--join-timeout": ("join_timeout", int),
    "--sample-steps": ("sample_steps", int), "--max-samples": ("max_samples", int),
    "--sample-inference-steps": ("sample_inference_steps", int),
    "--sample-cfg": ("sample_true_cfg_scale", float),
    "--sample-lora": ("sample_lora", str), "--sample-lora-strength": ("sample_lora_strength", float),
    "--lora-targets": ("lora_target_modules", str), "--init-lora": ("lora_checkpoint", str),
    "--quantize-base": ("quantize_base", str), "--offload-blocks": ("offload_blocks", int),
}
# Switches: CLI flag -> TrainOptions field set to True.
SWITCHES = {"--fp8-base": "fp8_base", "--text-encoder-offload": "text_encoder_offload",
            "--fp8-text-encoder": "fp8_text_encoder", "--ignore-memory-plan": "ignore_memory_plan"}
HELP = {"--checkpoints": "without --save-steps: checkpoints spread over the run (default 10)",
        "--keep-checkpoints": "keep the last N checkpoints plus the best by --keep-best-by "
                              "(default: all)",
        "--keep-best-by": "val_loss (default) or a scoreboard metric: psnr, ssim, "
                          "preserved_error, preserved_share, edit_strength, pixel_shift, zoom",
        "--report-to": "none, tensorboard, wandb, mlflow or trackio (each needs its library)",
        "--sample-steps": "sample edits of the validation pairs every N steps "
                          "(default: at each checkpoint; 0: never)",
        "--max-samples": "validation pairs sampled (default 4)",
        "--lr-scheduler": "reference (DiffSynth's), constant, constant_with_warmup, linear, cosine",
        "--init-lora": "start from this LoRA: an adapter id (adapters list) or a file",
        "--lora-targets": "comma-separated LoRA target modules (default: the recipe's)",
        "--max-grad-norm": "clip the gradient norm (default: off; ZeRO-2 runs clip at 1.0)",
        "--sample-cfg": "true CFG scale of the sample edits (default 1 = off)",
        "--sample-lora": "a few-step LoRA file stacked under the run's in the sample edits, to "
                         "preview a deployment with it (set --sample-inference-steps and "
                         "--sample-cfg to what it was made for)",
        "--quantize-base": "int8: the frozen transformer quantized by torchao (needs bf16)",
        "--offload-blocks": "transformer blocks kept in host memory, streamed to the device "
                            "layer by layer (slower; needs gradient checkpointing)",
        "--fp8-base": "store the frozen transformer in fp8, compute in bf16 (half the weights)",
        "--text-encoder-offload": "stream the text encoder's layers from host memory while encoding",
        "--fp8-text-encoder": "store the text encoder in fp8 while encoding",
        "--ignore-memory-plan": "start even when the memory plan says the run will not fit"}


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA on a project's pairs")
    p.add_argument("--project", default=None, help="the project to train on (not for --plan)")
    p.add_argument("--model", default="demo", help="model folder or 'demo'")
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="Demo on CPU")
    p.add_argument("--name", default=None, help="run name (default: <project>-lora)")
    for flag, (field, kind) in OPTION_FLAGS.items():
        p.add_argument(flag, dest=field, type=kind, default=None, help=HELP.get(flag))
    for flag, field in SWITCHES.items():
        p.add_argument(flag, dest=field, action="store_true", default=None, help=HELP.get(flag))
    p.add_argument("--gradient-checkpointing", dest="use_gradient_checkpointing",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for cuda/npu, off on cpu")
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan and its verdict on this machine; start nothing")
    p.add_argument("--plan-presets", action="store_true",
                   help="print every preset's memory plan on its card; start nothing")
    p.add_argument("--detach", action="store_true",
                   help="return at once; the run id is printed on the last line")
    p.set_defaults(handler=train)

    runs = sub.add_parser("runs", help="list, show, stop, resume or delete training runs")
    verbs = runs.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list")
    listing.add_argument("--project", default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_runs)
    for verb, handler in (("show", show_run), ("stop", stop_run), ("resume", resume_run),
                          ("delete", delete_run)):
        v = verbs.add_parser(verb)
        v.add_argument("id", type=int)
        if verb == "show":
            v.add_argument("--json", action="store_true")
        if verb == "resume":
            v.add_argument("--detach", action="store_true")
        v.set_defaults(handler=handler)


def manager(args) -> JobManager:
    return JobManager(open_store(args))


def options(args, preset: str | None = None) -> TrainOptions:
    """The preset's options (`--preset` unless named), with every flag given on top."""
    values = {**TrainOptions().as_dict(), **TRAIN_PRESETS[preset or args.preset], "model": args.model}
    for field in [f for f, _ in OPTION_FLAGS.values()] + [*SWITCHES.values(),
                                                           "use_gradient_checkpointing"]:
        if getattr(args, field, None) is not None:  # recipe-export has no saver switches
            values[field] = getattr(args, field)
    return TrainOptions.from_dict(values)


def follow(jobs: JobManager, run_id: int) -> int:
    """Show a progress bar until the run ends; Ctrl-C stops the run gracefully."""
    bar = tqdm(desc=f"run {run_id}", unit="step")
    try:
        while True:
            snap = jobs.snapshot(run_id)
            if snap["total"]:
                bar.total = snap["total"]
            bar.update(snap["step"] - bar.n)
            if snap["loss"] is not None:
                bar.set_postfix(loss=f"{snap['loss']:.4f}")
            if snap["run"]["status"] not in ("queued", "running", "stopping"):
                break
            time.sleep(1)
    except KeyboardInterrupt:
        print(f"\nstopping run {run_id} (it saves a checkpoint; continue with: runs resume {run_id})")
        jobs.stop(run_id)
        snap = {"run": jobs.wait(run_id)}
    finally:
        bar.close()
    run = snap["run"]
    print(f"run {run_id} {run['status']}" + (f": {run['error']}" if run["error"] else ""))
    return 0 if run["status"] in ("finished", "stopped") else 1


def show_plan(args) -> int:
    jobs = manager(args)
    if args.plan_presets:
        planned, rows = jobs.preset_plans(args.model)
        print(f"every preset on {planned}:")
        for row in rows:
            print(f"  {row['preset']}: {row['per device']} per device, {row['host per node']} "
                  f"host; {row['savers']}; {row['verdict']}")
        return 0
    planned = jobs.memory_plan(options(args))
    print(planned.text())
    return 0 if planned.verdict is None or planned.verdict.fits else 1


def train(args) -> int:
    if args.plan or args.plan_presets:
        return show_plan(args)
    if not args.project:
        raise SystemExit("studio train: --project is required")
    jobs = manager(args)
    run = jobs.submit(args.project, options(args), name=args.name)
    print(f"run {run['id']} {run['status']}: {run['run_dir']}")
    if args.detach:
        print(run["id"])
        return 0
    return follow(jobs, run["id"])


def summary(jobs: JobManager, snap: dict) -> dict:
    """A run's snapshot in short; its row is the reconciled one the snapshot holds."""
    run = snap["run"]
    return {"id": run["id"], "name": run["name"], "project": jobs.runs.project_name(run),
            "status": run["status"], "step": snap["step"], "total": snap["total"],
            "loss": snap["loss"], "pid": run["pid"],
            "val_loss": snap["validation"][-1]["val_loss"] if snap["validation"] else None, "exit_code": run["exit_code"],
            "run_dir": run["run_dir"], "command": run["command"], "error": run["error"],
            "created_at": run["created_at"], "started_at": run["started_at"],
            "ended_at": run["ended_at"]}


def list_runs(args) -> int:
    jobs = manager(args)
    jobs.reconcile()
    rows = [summary(jobs, jobs.snapshot(r["id"])) for r in jobs.runs.list(args.project)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']}\t{r['project']}\t{r['status']}\t{r['step']}/{r['total'] or '?'}\t{r['name']}")
    if not rows:
        print("no runs yet: python -m studio train --project NAME")
    return 0


def show_run(args) -> int:
    jobs = manager(args)
    snap = jobs.snapshot(args.id)
    board = jobs.scoreboard(args.id)
    row = {**summary(jobs, snap), "log": snap["log"], "scoreboard": board,
           "best": {m: scoreboard.best(board, m) for m in scoreboard.CHOICES}}
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    for key in ("id", "name", "project", "status", "step", "total", "loss", "val_loss", "pid",
                "exit_code", "run_dir", "command", "error"):
        print(f"{key}: {row[key]}")
    print("scoreboard:")
    print_scoreboard(board, row["best"])
    print("log:\n  " + "\n  ".join(row["log"]))
    return 0


def print_scoreboard(board: list[dict], best: dict) -> None:
    """Checkpoint x metric (means over the validation pairs), * on the best per metric."""
    if not any(r["pairs"] or r[scoreboard.VAL_LOSS] is not None for r in board):
        print("  no scores: this run has no validation pairs (hold some out: "
              "studio dataset split --validation N)")
        return
    names = scoreboard.CHOICES
    print("  " + "step".rjust(6) + "".join(n.rjust(16) for n in names) + "  pairs")
    for r in board:
        cells = ["-" if r[n] is None else f"{r[n]:.4g}" + ("*" if best[n] == r["step"] else " ")
                 for n in names]
        print("  " + str(r["step"]).rjust(6) + "".join(c.rjust(16) for c in cells) + f"  {r['pairs']}")
    worst = board[-1]["worst"] if board else {}
    if worst:
        print("  worst pair at step %d: %s" % (board[-1]["step"], ", ".join(f"{k} {v}" for k, v in worst.items())))
    note = scoreboard.preview_note(board)
    if note:
        print(f"  previews: {note}")


def stop_run(args) -> int:
    run = manager(args).stop(args.id)
    print(f"run {args.id} {run['status']}")
    return 0


def resume_run(args) -> int:
    jobs = manager(args)
    run = jobs.resume(args.id)
    print(f"run {args.id} {run['status']}")
    return 0 if args.detach else follow(jobs, args.id)


def delete_run(args) -> int:
    manager(args).delete(args.id)
    print(f"run {args.id} deleted")
    return 0
