"""Compare and edit-batch report each column's / adapter's edit metrics against the pair."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.cli import main
from studio.engine import edit_metrics
from studio.engine.adapters import AdapterRef
from studio.engine.batch import BatchItem, edit_batch
from studio.engine.compare import compare, plan_columns
from studio.engine.edit_metrics import mean_scores, metrics_line
from studio.engine.grid import PAD, _font, draw_grid, wrap
from tests.conftest import make_image
from tests.lora_files import random_lora, save_lora

PROMPT = "add a red square"
KW = dict(steps=2, size=(64, 64), true_cfg_scale=1.0)


def dark_columns(image: Image.Image, top: int, bottom: int) -> np.ndarray:
    """x positions where the band [top, bottom) holds text (dark pixels)."""
    band = np.asarray(image.convert("L"))[top:bottom]
    return np.nonzero((band < 128).any(axis=0))[0]


def pair(seed=0):
    """A source and a target that differs from it in one square: kept and changed regions."""
    source = make_image(64, 64, seed=seed)
    target = source.copy()
    ImageDraw.Draw(target).rectangle((20, 20, 43, 43), fill=(230, 30, 30))
    return source, target


def test_wrap_keeps_every_character_and_fits_the_width():
    font = _font()
    for text in ("newcomer-lora-step-000100 @ 1", "PSNR 21.3 · SSIM 0.71 · kept 97% · shift 0.4px",
                 "x" * 40, "input"):
        lines = wrap(text, font, 60)
        assert all(font.getlength(line) <= 60 for line in lines)
        assert "".join(lines).replace(" ", "").replace("·", "") == \
            text.replace(" ", "").replace("·", "")
    assert wrap("input", font, 60) == ["input"]
    # Metrics break between metrics first, names after their hyphens.
    assert wrap("PSNR 21.3 · SSIM 0.71", font, 80) == ["PSNR 21.3", "SSIM 0.71"]
    assert wrap("newcomer-lora", font, font.getlength("newcomer-") + 1) == ["newcomer-", "lora"]


def test_small_cells_wrap_their_labels_inside_their_own_column():
    cells = [[Image.new("RGB", (64, 64), (255, 255, 255))] * 3]
    labels = ["input", "target", "newcomer-lora-step-000100 @ 1"]
    footers = ["", "", "PSNR 21.3 · SSIM 0.71 · kept 97% · edit 0.85x · shift 0.4px"]
    grid, boxes = draw_grid(cells, labels, ["seed 0"], footers=footers, footer_label="mean")
    lefts = [b[0] for b in boxes[0]]
    col_w = lefts[1] - lefts[0] - PAD
    centres = [(b[0] + b[2]) / 2 for b in boxes[0]]
    assert col_w < _font().getlength(labels[2])  # wrapped, not widened to the longest name
    header_bottom, footer_top = boxes[0][0][1], boxes[0][0][3]
    for band in ((0, header_bottom), (footer_top, grid.height)):
        xs = dark_columns(grid, *band)
        label_w = lefts[0] - (col_w - 64) // 2
        text = xs[xs >= label_w]  # the row label ("mean") stays left of the columns
        assert len(text)
        # Every dark pixel belongs to one column's span: none is cut at a neighbour or edge.
        owner = [min(range(3), key=lambda c: abs(x - centres[c])) for x in text]
        assert all(abs(x - centres[c]) <= col_w / 2 for x, c in zip(text, owner))
        assert text.max() < grid.width - 1
    # The footer is drawn under the adapter column only.
    footer_xs = dark_columns(grid, footer_top, grid.height)
    assert footer_xs[footer_xs >= lefts[0] - (col_w - 64) // 2].min() > centres[1] + col_w / 2


def test_mean_scores_leave_out_what_was_not_measured():
    scores = [{"psnr": 20.0, "ssim": 0.5, "pixel_shift": None},
              {"psnr": 30.0, "ssim": 0.7, "pixel_shift": 2.0}]
    means = mean_scores(scores)
    assert means["psnr"] == pytest.approx(25.0) and means["ssim"] == pytest.approx(0.6)
    assert means["pixel_shift"] == 2.0 and means["zoom"] is None
    assert set(means) == {m.name for m in edit_metrics.METRICS}
    line = metrics_line({"psnr": 21.34, "ssim": 0.714, "preserved_share": 0.968,
                         "edit_strength": None, "pixel_shift": 0.44})
    assert line == "PSNR 21.3 · SSIM 0.71 · kept 97% · shift 0.4px"


@pytest.fixture(scope="module")
def lora(demo_model, tmp_path_factory):
    return save_lora(random_lora(demo_model, seed=1), tmp_path_factory.mktemp("l") / "new.safetensors")


@pytest.mark.slow
def test_compare_scores_each_column_as_the_mean_of_its_seeds(demo_editor, lora):
    source, target = pair()
    columns = plan_columns([None, AdapterRef(lora)])
    result = compare(demo_editor, [source], PROMPT, columns, seeds=[0, 1], target=target, **KW)
    entries = result.params["columns"]
    for c, entry in enumerate(entries):
        cells = [edit_metrics.score(row[c], source, target) for row in result.cells]
        assert entry["metrics_per_seed"] == cells
        for name in ("psnr", "ssim", "preserved_error", "preserved_share", "edit_strength"):
            assert entry["metrics"][name] == pytest.approx((cells[0][name] + cells[1][name]) / 2)
        assert result.metrics[c] == entry["metrics"]
    assert entries[0]["metrics"] != entries[1]["metrics"]  # the adapter's edit differs
    json.loads(json.dumps(result.params, allow_nan=False))  # plain JSON: no NaN or inf
    assert set(result.params["metrics_meaning"]) == {m.name for m in edit_metrics.METRICS}
    # The grid grew a footer row of text under the scored columns, none under input/target.
    plain = compare(demo_editor, [source], PROMPT, columns[:1], seeds=[0], **KW)
    assert plain.metrics is None and "metrics" not in plain.params["columns"][0]
    assert plain.grid.height - plain.boxes[-1][0][3] == 2 * PAD  # no footer without a target
    assert result.grid.height - result.boxes[-1][0][3] > 3 * 12
    (base, adapter), footer_top = result.boxes[-1], result.boxes[-1][0][3]
    step = adapter[0] - base[0]  # one column and its gap
    xs = dark_columns(result.grid, footer_top, result.grid.height)
    centre = (base[0] + base[2]) / 2
    under_inputs = (xs > centre - 2.5 * step) & (xs < centre - 0.5 * step)
    under_scored = (xs > centre - 0.5 * step) & (xs < centre + 1.5 * step)
    assert under_scored.sum() > 50 and not under_inputs.any()


@pytest.mark.slow
def test_edit_batch_scores_pairs_and_keeps_one_summary_per_adapter(demo_editor, lora, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    items = []
    for n in range(2):
        source, target = pair(seed=n)
        source.save(folder / f"s{n}.png")
        target.save(folder / f"t{n}.png")
        items.append(BatchItem(f"p{n}", [folder / f"s{n}.png"], PROMPT, folder / f"t{n}.png"))
    plain = BatchItem("free", [folder / "s0.png"], PROMPT)  # no target: nothing to score
    out = tmp_path / "out"
    options = dict(steps=2, size=(64, 64), true_cfg_scale=1.0)
    report = edit_batch(demo_editor, [items[0], plain], out, **options)
    with (out / "index.jsonl").open("a") as f:
        f.write("{not json\n")  # a line someone broke: kept as it is
    report = edit_batch(demo_editor, [*items, plain], out, **options)  # resumed: p0 skipped
    assert report.skipped == 2 and len(report.summaries) == 1
    lines = (out / "index.jsonl").read_text().splitlines()
    assert "{not json" in lines
    rows = [json.loads(line) for line in lines if line != "{not json"]
    edits = {r["output"]: r for r in rows if r["output"]}
    for n in range(2):
        expected = edit_metrics.score(out / f"p{n}.png", folder / f"s{n}.png", folder / f"t{n}.png")
        assert edits[f"p{n}.png"]["metrics"] == expected
    assert edits["free.png"]["metrics"] is None
    (summary,) = [r for r in rows if r.get("summary")]
    assert summary["adapters"] == [] and summary["scored"] == 2
    assert summary["metrics"]["psnr"] == pytest.approx(
        (edits["p0.png"]["metrics"]["psnr"] + edits["p1.png"]["metrics"]["psnr"]) / 2)

    # p1 redone with the adapter: one summary per adapter stack, each over its latest outputs.
    report = edit_batch(demo_editor, [items[1]], out, overwrite=True,
                        adapters=[AdapterRef(lora)], **options)
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()
            if line != "{not json"]
    assert [r["output"] for r in rows if r["output"]] == ["p0.png", "free.png", "p1.png"]
    summaries = {len(r["adapters"]): r for r in rows if r.get("summary")}
    assert len(summaries) == 2 == len(report.summaries)
    assert summaries[0]["scored"] == 1 and summaries[1]["scored"] == 1
    assert summaries[1]["metrics"] == rows[2]["metrics"]


@pytest.mark.slow
def test_cli_compare_a_pair_as_json_and_edit_batch_its_validation(demo_model, projects, tmp_path,
                                                                  capsys):
    from studio.dataset.synthetic_pairs import add_synthetic_pairs
    from studio.store import Store

    store = Store(projects)
    store.create_project("p")
    add_synthetic_pairs(store, "p", 3)
    first = store.pairs.page("p")[0]
    model = ["--model", str(demo_model), "--steps", "2", "--cfg", "1", "--size", "64x64"]
    assert main(["compare", *model, "--project", "p", "--pair", str(first["id"]),
                 "--adapters", "base", "--seeds", "0,1", "--json"]) == 0
    captured = capsys.readouterr()
    params = json.loads(captured.out)  # stdout is the JSON alone
    (column,) = params["columns"]
    assert params["prompt"] == first["instruction"]
    assert len(column["metrics_per_seed"]) == 2 and column["metrics"]["ssim"] is not None
    assert f"base: {metrics_line(column['metrics'])}" in captured.err
    assert main(["compare", *model, "--image", "x.png", "--pair", "1", "--adapters", "base",
                 "--json"]) == 2
    assert "--pair needs --project" in capsys.readouterr().err

    out = tmp_path / "val"
    assert main(["edit-batch", *model, "--project", "p", "--split", "validation",
                 "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    (summary,) = [r for r in rows if r.get("summary")]
    scored = [r for r in rows if r["output"]]
    assert summary["scored"] == len(scored) >= 1 and all(r["metrics"] for r in scored)
    assert f"base, mean of {len(scored)} scored: {metrics_line(summary['metrics'])}" in printed


@pytest.mark.slow
def test_compare_tab_scores_against_the_pair_s_target(app_url, tmp_path):
    from gradio_client import Client, handle_file

    source, target = pair()
    source.save(tmp_path / "source.png")
    target.save(tmp_path / "target.png")
    grid_path, note, files = Client(app_url[0], verbose=False).predict(
        "default", handle_file(str(tmp_path / "source.png")),
        handle_file(str(tmp_path / "target.png")), PROMPT, "", ["base"], "1", "0,1", "",
        2, 1.0, 64, 64, api_name="/compare")
    assert "metrics against the dataset pair (mean of the seeds)" in note
    params = json.loads(next(open(f).read() for f in files if f.endswith(".json")))
    (column,) = params["columns"]
    assert len(column["metrics_per_seed"]) == 2
    assert column["metrics"]["psnr"] == pytest.approx(
        sum(s["psnr"] for s in column["metrics_per_seed"]) / 2)
