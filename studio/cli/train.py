"""`train` and `runs …`: training jobs without a browser."""
from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from ..jobs import planning, results
from ..jobs.manager import JobManager
from ..jobs.launch import TrainOptions
from ..jobs.presets import DEMO, TRAIN_PRESETS, preset_options
from ..trainer import scoreboard
from ..trainer.options import studio_options
from .project import open_store


def add_option_flags(p) -> None:
    """One flag per training option of the table (trainer/options.py), in kebab-case; each
    left unset (None) keeps the preset's value."""
    for opt in studio_options():
        if opt.cli_flag is None:
            continue
        for flag, shown in ((opt.cli_flag, opt.help or None),
                            *((alias, argparse.SUPPRESS) for alias in opt.aliases)):
            keywords = dict(dest=opt.name, default=None, help=shown)
            if opt.kind is bool:
                keywords["action"] = ("store_true" if opt.default is False
                                      else argparse.BooleanOptionalAction)
            else:
                keywords["type"] = opt.kind
            if opt.choices:
                keywords["choices"] = opt.choices
            p.add_argument(flag, **keywords)


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA on a project's pairs")
    p.add_argument("--project", default=None, help="the project to train on (not for --plan)")
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=DEMO,
                   help="the starting point; each flag below changes one of its options")
    p.add_argument("--name", default=None, help="run name (default: <project>-lora)")
    add_option_flags(p)
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
    given = {o.name: getattr(args, o.name) for o in studio_options()
             if getattr(args, o.name, None) is not None}
    if "num_checkpoints" in given:
        if "save_steps" in given:
            raise SystemExit("give --save-steps or --num-checkpoints, not both")
        given["save_steps"] = None  # the checkpoints asked for win over the preset's cadence
    return preset_options(preset or args.preset, **given)


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
        planned, rows = planning.preset_plans(jobs.store, options(args).model)
        print(f"every preset on {planned}:")
        for row in rows:
            print(f"  {row['preset']}: {row['per device']} per device, {row['host per node']} "
                  f"host; {row['savers']}; {row['verdict']}")
        return 0
    planned = planning.memory_plan(jobs.store, options(args))
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
    board = results.scoreboard_rows(jobs.store, args.id)
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
