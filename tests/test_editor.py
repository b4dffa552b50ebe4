import threading

import numpy as np
import pytest

from studio.engine.editor import EditCancelled, Editor, size_for_area
from tests.conftest import make_image


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_same_seed_same_pixels_other_seed_other_pixels(demo_editor):
    image = make_image()
    a = demo_editor.edit(image, "make the sky blue", seed=7, steps=2, size=(64, 64))
    b = demo_editor.edit(image, "make the sky blue", seed=7, steps=2, size=(64, 64))
    c = demo_editor.edit(image, "make the sky blue", seed=8, steps=2, size=(64, 64))
    assert a.image.size == (64, 64) and pixels(a.image).std() > 0
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert not np.array_equal(pixels(a.image), pixels(c.image))


def test_default_size_follows_the_input_aspect_at_the_model_area(demo_editor):
    result = demo_editor.edit(make_image(120, 60), "make it wider", steps=2, true_cfg_scale=1)
    width, height = result.image.size
    assert width % 16 == 0 and height % 16 == 0
    assert 1.8 <= width / height <= 2.2
    assert abs(width * height - demo_editor.info.native_area) / demo_editor.info.native_area < 0.1
    assert size_for_area(1000, 1000, 1024 * 1024) == (1024, 1024)


def test_progress_reports_each_step(demo_editor):
    seen = []
    demo_editor.edit(make_image(), "add a hat", steps=3, size=(32, 32), true_cfg_scale=1,
                     progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cancel_stops_the_edit(demo_editor):
    def cancel_after_first_step(step, total):
        demo_editor.cancel("k1")

    with pytest.raises(EditCancelled):
        demo_editor.edit(make_image(), "add a hat", steps=5, size=(32, 32), true_cfg_scale=1,
                         progress=cancel_after_first_step, cancel_key="k1")
    # The key is spent: the next edit with it runs to the end.
    assert demo_editor.edit(make_image(), "add a hat", steps=2, size=(32, 32),
                            true_cfg_scale=1, cancel_key="k1").image.size == (32, 32)


def test_bad_requests_get_clear_errors(demo_editor):
    with pytest.raises(ValueError, match="at most 1 input image"):
        demo_editor.edit([make_image(), make_image()], "x", steps=2)
    with pytest.raises(ValueError, match="instruction"):
        demo_editor.edit(make_image(), "  ", steps=2)
    with pytest.raises(ValueError, match="at least 2"):
        demo_editor.edit(make_image(), "add a hat", steps=1)


def test_threads_share_one_pipeline_and_get_their_own_results(demo_editor):
    image = make_image()
    expected = {seed: pixels(demo_editor.edit(image, "add a hat", seed=seed, steps=2,
                                              size=(32, 32), true_cfg_scale=1).image) for seed in (1, 2)}
    results = {}

    def run(seed):
        results[seed] = pixels(demo_editor.edit(image, "add a hat", seed=seed, steps=2,
                                                size=(32, 32), true_cfg_scale=1).image)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in (1, 2):
        assert np.array_equal(results[seed], expected[seed])


def test_plus_model_edits_with_several_images(tmp_path):
    from studio.engine.demo_model import build_demo_model

    editor = Editor(build_demo_model(tmp_path / "plus", plus=True), device="cpu")
    assert editor.info.max_images == 3
    assert type(editor.pipeline).__name__ == "QwenImageEditPlusPipeline"
    result = editor.edit([make_image(seed=1), make_image(seed=2)], "put the cat on the sofa",
                         steps=2, size=(32, 32), true_cfg_scale=1)
    assert result.image.size == (32, 32)
