"""How good an edit is, given the pair it was made for: the output against the pair's target
(similarity) and against its source (what should have stayed, what should have changed, drift).

Images are compared at the output's size (the source and target are resized to it), as RGB in
[0, 1]. The pair itself says where an edit belongs: pixels where source and target agree within
TOLERANCE are the *preserved* region, the rest the *changed* region. Pure numpy/scikit-image:
no torch, so the job manager, the CLI and the trainer's rank 0 can all score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TOLERANCE = 0.06  # mean |difference| over RGB (~15/255): JPEG noise stays, real change does not
PSNR_CAP = 100.0  # dB reported for identical images (PSNR is infinite there; JSON has no inf)
MIN_SCALE_SIDE = 64  # px: below this the log-polar spectrum is too coarse to read a zoom
# Zoom, and the shift of a mostly edited picture, are read on a copy at most this long
# (masked registration of 1 MP takes seconds).
REGISTRATION_SIDE = 256


def as_array(image: Image.Image | str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB float array in [0, 1], resized to size (width, height) when given."""
    image = _open(image)
    if size and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).mean(axis=-1)


def preserved_region(source: np.ndarray, target: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """Where the pair says nothing should change: source and target agree within tolerance."""
    return _distance(source, target) <= tolerance


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    """Target PSNR (dB, higher is better): how close the output is to the pair's target,
    pixel by pixel; capped at PSNR_CAP for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(output, target):
        return PSNR_CAP
    return float(min(peak_signal_noise_ratio(target, output, data_range=1.0), PSNR_CAP))


def ssim(output: np.ndarray, target: np.ndarray) -> float:
    """Target SSIM (1 is identical): how close the output's structure and contrast are to the
    target's, as the eye judges it more than PSNR does."""
    from skimage.metrics import structural_similarity

    side = min(output.shape[:2])
    window = min(7, side if side % 2 else side - 1)  # scikit-image needs an odd window that fits
    return float(structural_similarity(target, output, data_range=1.0, channel_axis=-1,
                                       win_size=window))


def preserved_error(output: np.ndarray, source: np.ndarray, keep: np.ndarray) -> float | None:
    """Preservation error (lower is better): the mean change from the source, on a 0-1 scale,
    where the pair says the picture should have stayed as it was."""
    return float(_distance(output, source)[keep].mean()) if keep.any() else None


def preserved_share(output: np.ndarray, source: np.ndarray, keep: np.ndarray,
                    tolerance: float = TOLERANCE) -> float | None:
    """Preserved share (1 is best): the fraction of the should-stay pixels that did stay."""
    if not keep.any():
        return None
    return float((_distance(output, source)[keep] <= tolerance).mean())


def edit_strength(output: np.ndarray, source: np.ndarray, target: np.ndarray,
                  keep: np.ndarray) -> float | None:
    """Edit strength (1 is the target's): how much the output changed where the pair changed,
    as a fraction of how much the target changed there; 0 means the edit did not happen."""
    changed = ~keep
    if not changed.any():
        return None
    wanted = _distance(target, source)[changed].mean()
    return float(_distance(output, source)[changed].mean() / wanted) if wanted > 0 else None


def _gray(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image)


def pixel_shift(output: np.ndarray, source: np.ndarray, keep: np.ndarray,
                small: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> float | None:
    """Pixel shift (px, 0 is best): how far the output slid against the source where it should
    have stayed, the drift a LoRA can add to every edit."""
    from skimage.registration import phase_cross_correlation

    share = keep.mean()
    if share < 0.05:  # nothing to register on
        return None
    if share >= 0.5:  # the kept part dominates the correlation: sub-pixel, at full size
        shift, _, _ = phase_cross_correlation(_gray(source), _gray(output), upsample_factor=10)
        return float(math.hypot(*shift[:2]))
    # Mostly edited: register on the kept part only. The masked form costs seconds at 1 MP
    # and finds whole pixels, so it runs on the small copy, in its pixels times the factor.
    out_s, src_s, keep_s = small or (output, source, keep)
    shift = phase_cross_correlation(_gray(src_s), _gray(out_s), reference_mask=keep_s,
                                    moving_mask=keep_s)
    shift = np.asarray(shift[0] if isinstance(shift, tuple) else shift, dtype=float)
    return float(math.hypot(*shift[:2]) * output.shape[1] / out_s.shape[1])


def zoom(output: np.ndarray, source: np.ndarray, keep: np.ndarray) -> float | None:
    """Zoom (1 is best): how much larger the output draws the picture than the source (1.1 is
    10 % zoomed in), read from their spectra, which a shift does not change."""
    from scipy.fft import fft2, fftshift
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    if min(output.shape[:2]) < MIN_SCALE_SIDE or keep.mean() < 0.05:
        return None
    spectra = []
    for image in (source, output):
        gray = _gray(image)
        gray = np.where(keep, gray, gray[keep].mean())  # the edit itself is no zoom
        gray = difference_of_gaussians(gray, 1, None) * window("hann", gray.shape)
        spectra.append(np.abs(fftshift(fft2(gray))))
    shape = spectra[0].shape
    radius = min(shape) // 4
    polar = [warp_polar(s, radius=radius, output_shape=shape, scaling="log", order=0)[: shape[0] // 2]
             for s in spectra]
    shift, _, _ = phase_cross_correlation(polar[0], polar[1], upsample_factor=10, normalization=None)
    # A picture drawn s times larger has a spectrum s times smaller: a log-radius shift.
    return float(math.exp(shift[1] * math.log(radius) / shape[1]))


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    best: float  # the value a perfect edit gets
    higher_is_better: bool = False  # else: closer to `best` is better

    def badness(self, value: float | None) -> float:
        """Lower is better; a missing value ranks last."""
        if value is None:
            return math.inf
        if self.higher_is_better:
            return -value
        return abs(math.log(value)) if self.name == "zoom" else abs(value - self.best)


METRICS = (
    Metric("psnr", "PSNR (dB)", PSNR_CAP, higher_is_better=True),
    Metric("ssim", "SSIM", 1.0, higher_is_better=True),
    Metric("preserved_error", "Preservation error", 0.0),
    Metric("preserved_share", "Preserved share", 1.0, higher_is_better=True),
    Metric("edit_strength", "Edit strength", 1.0),
    Metric("pixel_shift", "Pixel shift (px)", 0.0),
    Metric("zoom", "Zoom", 1.0),
)
BY_NAME = {m.name: m for m in METRICS}
FUNCTIONS = {"psnr": psnr, "ssim": ssim, "preserved_error": preserved_error,
             "preserved_share": preserved_share, "edit_strength": edit_strength,
             "pixel_shift": pixel_shift, "zoom": zoom}


def meaning(name: str) -> str:
    """The metric's one-sentence meaning for a user (its docstring)."""
    return " ".join(FUNCTIONS[name].__doc__.split())


def _open(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


def score(output, source, target) -> dict[str, float | None]:
    """Every metric of one edit (images or paths); None where a metric has nothing to measure
    (no changed region for edit strength, no preserved one for shift and zoom)."""
    images = [_open(i) for i in (output, source, target)]
    size = images[0].size
    out, src, tgt = (as_array(i, size) for i in images)
    keep = preserved_region(src, tgt)
    factor = max(1.0, max(size) / REGISTRATION_SIDE)
    small = (max(1, round(size[0] / factor)), max(1, round(size[1] / factor)))
    out_s, src_s, tgt_s = (as_array(i, small) for i in images)
    keep_s = preserved_region(src_s, tgt_s)
    return {"psnr": psnr(out, tgt), "ssim": ssim(out, tgt),
            "preserved_error": preserved_error(out, src, keep),
            "preserved_share": preserved_share(out, src, keep),
            "edit_strength": edit_strength(out, src, tgt, keep),
            "pixel_shift": pixel_shift(out, src, keep, (out_s, src_s, keep_s)),
            "zoom": zoom(out_s, src_s, keep_s)}


SHORT = (("psnr", "PSNR {:.1f}"), ("ssim", "SSIM {:.2f}"), ("preserved_share", "kept {:.0%}"),
         ("edit_strength", "edit {:.2f}x"), ("pixel_shift", "shift {:.1f}px"))


def mean_scores(scores: list[dict]) -> dict[str, float | None]:
    """The mean of each metric over several edits' scores, leaving out the edits where it was
    not measurable (None, or not finite: JSON has no NaN); None where none measured it."""
    means = {}
    for metric in METRICS:
        values = [s[metric.name] for s in scores
                  if s.get(metric.name) is not None and math.isfinite(s[metric.name])]
        means[metric.name] = sum(values) / len(values) if values else None
    return means


def metrics_line(scores: dict) -> str:
    """e.g. 'PSNR 21.3 · SSIM 0.71 · kept 97% · edit 0.85x · shift 0.4px' (measured ones only)."""
    return " · ".join(form.format(scores[name]) for name, form in SHORT
                      if scores.get(name) is not None)
