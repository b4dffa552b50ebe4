"""The warnings that make pairs visible: nearly identical images, aspect ratios the resize
distorts, one instruction for unlike changes; and the difference view."""
import numpy as np
from PIL import Image, ImageDraw

from studio.dataset import difference, importers
from studio.dataset.checks import size_issues
from studio.dataset.validate import validate_project
from studio.store import Store
from tests.conftest import make_image


def with_square(image, box):
    image = image.copy()
    ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255))
    return image


def add(store, tmp_path, name, source, target, text):
    source.save(tmp_path / f"{name}_s.jpg", quality=95)
    target.save(tmp_path / f"{name}_t.jpg", quality=80)  # other bytes even when alike
    importers.import_pair(store, "p", tmp_path / f"{name}_s.jpg", tmp_path / f"{name}_t.jpg",
                          text, sample_id=name)


def warnings_of(report, name):
    return [p["message"] for p in report.problems if p["sample_id"] == name]


def test_validation_warns_on_identical_pairs_and_one_instruction_for_unlike_changes(tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    base = make_image(128, 96, 3)
    add(store, tmp_path, "same", base, base, "Add a white box in the corner")
    add(store, tmp_path, "small_edit", base, with_square(base, (100, 70, 112, 82)),
        "Add a white box in the corner")
    # "edited" on pairs whose boxes are in different places: unlike changes.
    for n, corner in enumerate([(0, 0), (100, 0), (0, 70), (100, 70), (50, 35), (20, 60)]):
        x, y = corner
        add(store, tmp_path, f"edited{n}", make_image(128, 96, n),
            with_square(make_image(128, 96, n), (x, y, x + 25, y + 25)), "edited")
    # One instruction for the same global change on every pair is a style set: no warning.
    for n in range(6):
        image = make_image(128, 96, 20 + n)
        add(store, tmp_path, f"dark{n}", image, Image.eval(image, lambda v: v // 3), "Make it dark")
    report = validate_project(store, "p")

    (same,) = warnings_of(report, "same")
    assert "nearly identical" in same and "remove the pair" in same
    assert warnings_of(report, "small_edit") == []
    for n in range(6):
        (repeated,) = warnings_of(report, f"edited{n}")
        assert "'edited' is shared by 6 pairs whose changes differ" in repeated
        assert "--write --search 'edited'" in repeated
        assert warnings_of(report, f"dark{n}") == []


def test_an_unreadable_image_is_named_by_validation(tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    add(store, tmp_path, "ok", make_image(96, 64, 0), make_image(96, 64, 1), "Change the colours")
    pair = store.pairs.find("p", "ok")
    store.pairs.path("p", pair["target_path"]).write_bytes(b"\xff\xd8\xff broken")
    report = validate_project(store, "p")
    assert report.errors == 1 and "the images cannot be read" in report.problems[0]["message"]


def test_the_aspect_warning_says_how_much_the_resize_distorts():
    (warning,) = size_issues((640, 480), (480, 640))
    ratio = (640 / 480) / (480 / 640)  # 1.78: the two frames differ by this factor
    assert f"stretched {ratio - 1:.0%}" in warning["message"] == warning["message"]
    assert f"loses {1 - 1 / ratio:.0%} of its area" in warning["message"]
    assert "Crop the source to the target's framing" in warning["message"]


def test_the_difference_view_shows_where_and_how_much():
    source = make_image(128, 96, 1)
    target = with_square(source, (64, 48, 127, 95))  # the bottom-right quarter changed
    view = np.asarray(difference.difference_view(source, target, side=128), dtype=float)
    changed, unchanged = view[60:, 70:], view[:40, :50]
    # Unchanged pixels are the target dimmed to grey (at most 35 %), changed ones red to
    # yellow by how much they changed: more changed, more green on the red.
    assert unchanged.max() <= 0.35 * 255 + 1 and (unchanged[..., 0] == unchanged[..., 2]).all()
    assert changed[..., 0].mean() > 150 and changed[..., 0].mean() > 3 * unchanged[..., 0].mean()
    diff = np.abs(np.asarray(source, float) - np.asarray(target, float)).mean(axis=2)
    changed_diff = np.where(diff > 0, diff, np.inf)
    most, least = (np.unravel_index(diff.argmax(), diff.shape),
                   np.unravel_index(changed_diff.argmin(), diff.shape))
    assert diff[most] > 2 * diff[least]
    assert view[most][1] > view[least][1] + 50  # the largest change is the most yellow
    # Measured cell by cell: the change sits in the quarter it was made in.
    change = difference.measure(source, target)
    expected = np.abs(np.asarray(source, float) - np.asarray(target, float)).mean() / 255
    assert abs(change.mean - expected) < 0.03
    assert change.signature[4:, 4:].min() > 5 * change.signature[:4, :4].max()
    other = difference.measure(source, with_square(source, (0, 0, 63, 47)))
    assert difference.similarity(change.signature, other.signature) < 0.2


def test_a_launch_keeps_the_repeated_warning_only_while_the_text_is_the_same(tmp_path):
    from studio.dataset.instructions import set_instruction
    from studio.dataset.validate import check_for_launch

    store = Store(tmp_path / "projects")
    store.create_project("p")
    for n, (x, y) in enumerate([(0, 0), (100, 0), (0, 70), (100, 70), (50, 35)]):
        add(store, tmp_path, f"e{n}", make_image(128, 96, n),
            with_square(make_image(128, 96, n), (x, y, x + 25, y + 25)), "edited")
    validate_project(store, "p")
    set_instruction(store, "p", store.pairs.find("p", "e0")["id"], "Add a white box top left")
    store.pairs.set_checked([store.pairs.find("p", "e1")["id"]], None)  # re-checked, same text
    check_for_launch(store, "p", 1048576)
    issues = {n: [i["message"] for i in store.pairs.find("p", n)["issues"]] for n in ("e0", "e1")}
    assert not any("is shared by" in m for m in issues["e0"])
    assert any("'edited' is shared by 5 pairs" in m for m in issues["e1"])
