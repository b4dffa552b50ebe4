"""Edit metrics on images built here, with answers known by construction."""
import math

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from studio.engine import edit_metrics


def _scene(height=128, width=160, seed=0) -> np.ndarray:
    smooth = gaussian_filter(np.random.default_rng(seed).random((height, width, 3)), (3, 3, 0))
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


@pytest.fixture
def pair():
    source = _scene()
    target = source.copy()
    target[20:60, 30:90] = 1.0 - target[20:60, 30:90]  # the edit: one box, inverted
    return _image(source), _image(target)


def test_output_equal_to_target_scores_perfect_similarity(pair):
    source, target = pair
    scores = edit_metrics.score(target, source, target)
    assert scores["psnr"] == edit_metrics.PSNR_CAP
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["edit_strength"] == pytest.approx(1.0)
    assert scores["pixel_shift"] == pytest.approx(0.0, abs=0.1)


def test_psnr_matches_the_published_formula(pair):
    source, target = pair
    a, b = edit_metrics.as_array(source), edit_metrics.as_array(target)
    mse = float(((a - b) ** 2).mean())
    assert edit_metrics.score(source, source, target)["psnr"] == pytest.approx(10 * math.log10(1 / mse))


@pytest.mark.parametrize("dy,dx", [(0, 3), (3, 0), (-2, 2)])
def test_a_shifted_output_reports_its_shift(dy, dx):
    source = _scene()
    shifted = np.roll(source, (dy, dx), axis=(0, 1))
    scores = edit_metrics.score(_image(shifted), _image(source), _image(source))
    assert scores["pixel_shift"] == pytest.approx(math.hypot(dy, dx), abs=0.5)


def test_a_shift_is_found_on_the_preserved_region_of_a_mostly_edited_pair():
    source = _scene()
    target = source.copy()
    target[:, 40:] = 1.0 - target[:, 40:]  # three quarters changed: registration must mask
    output = np.roll(source, 3, axis=1)
    output[:, 43:] = 1.0 - output[:, 43:]
    scores = edit_metrics.score(_image(output), _image(source), _image(target))
    assert scores["pixel_shift"] == pytest.approx(3.0, abs=0.5)


def test_an_output_equal_to_the_source_did_no_edit_and_kept_everything(pair):
    source, target = pair
    scores = edit_metrics.score(source, source, target)
    assert scores["edit_strength"] == 0.0
    assert scores["preserved_error"] == 0.0
    assert scores["preserved_share"] == 1.0
    assert scores["pixel_shift"] == pytest.approx(0.0, abs=0.1)


def test_an_edit_confined_to_a_box_preserves_everything_outside_it(pair):
    source, target = pair
    output = edit_metrics.as_array(source).copy()
    output[20:60, 30:90] = 0.5  # a different edit than the target's, inside the same box
    scores = edit_metrics.score(_image(output), source, target)
    assert scores["preserved_share"] == 1.0
    assert scores["preserved_error"] < 1 / 255
    assert 0 < scores["edit_strength"] < 1


def test_a_zoomed_output_reports_its_zoom():
    source = _image(_scene(256, 256))
    big = source.resize((320, 320), Image.Resampling.BICUBIC)  # 1.25x, centre crop back
    zoomed = big.crop((32, 32, 288, 288))
    assert edit_metrics.score(zoomed, source, source)["zoom"] == pytest.approx(1.25, abs=0.03)
    assert edit_metrics.score(source, source, source)["zoom"] == pytest.approx(1.0, abs=0.01)


def test_sources_of_another_size_are_compared_at_the_outputs_size(pair):
    source, target = pair
    scores = edit_metrics.score(target, source.resize((320, 256)), target.resize((80, 64)))
    assert scores["ssim"] > 0.9 and scores["edit_strength"] > 0.8


def test_every_metric_has_a_meaning_and_an_order():
    for metric in edit_metrics.METRICS:
        assert edit_metrics.meaning(metric.name).endswith(".")
        assert metric.badness(None) == math.inf
    shift = edit_metrics.BY_NAME["pixel_shift"]
    assert shift.badness(0.5) < shift.badness(2.0)
    assert edit_metrics.BY_NAME["zoom"].badness(1 / 1.1) == pytest.approx(
        edit_metrics.BY_NAME["zoom"].badness(1.1))
