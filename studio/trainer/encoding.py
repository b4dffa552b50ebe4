"""The run's pairs and their encodings: the training pairs (CSV or parquet), the held-out
validation pairs, and a function pair-index -> encoded tensors over the on-disk cache, which
every process fills with its share of what is missing."""
from __future__ import annotations

import logging
from pathlib import Path

from studio.engine.savers import Savers

from . import dist, parquet_pairs, validation
from .cache import EncodedCache, EncodingProgress, PairEncoder, model_fingerprint
from .data import DatasetError, load_pairs, load_validation_pairs

log = logging.getLogger("studio.trainer")


def _cache_root(args) -> Path:
    # A parquet run may have no dataset folder; its output folder is always writable.
    beside = Path(args.dataset_base_path or args.output_path) / ".studio_cache"
    return Path(args.cache_path or beside).expanduser().resolve()


def _fixed_size(args) -> tuple[int, int] | None:
    return (args.width, args.height) if args.width else None


def encode_cache(args, info, dtype) -> EncodedCache | None:
    """The on-disk cache of encodings (None with --no-cache), keyed by what decides them."""
    if not args.cache:
        return None
    fp = model_fingerprint(info.path)
    settings = {"max_pixels": args.max_pixels, "fixed": _fixed_size(args), "dtype": str(dtype),
                "edit_auto_resize": args.edit_image_auto_resize, "pipeline": info.pipeline_class}
    if Savers.of(args).fp8_text_encoder:  # other encodings: cached apart (offload changes none
        settings["fp8_text_encoder"] = True  # of them, and older caches keep their keys)
    return EncodedCache(_cache_root(args) / fp, fp, settings)


def training_pairs(args, cache: EncodedCache | None):
    """The CSV's pairs (a list), or the parquet rows that can train (a lazy sequence that
    knows its cache keys)."""
    if not args.dataset_parquet:
        return load_pairs(args.dataset_base_path, args.dataset_metadata_path)
    return parquet_pairs.load(args.dataset_parquet, args.parquet_columns, args.max_pixels, cache)


def held_out(args) -> list:
    """Validation pairs for the validation loss; a broken validation file only disables it,
    as it only disables the sample edits. --encode_only takes them all, so that any later
    run finds the ones it scores already encoded."""
    if not (args.validation_loss or args.encode_only):
        return []
    try:
        return load_validation_pairs(args)[:None if args.encode_only else validation.MAX_PAIRS]
    except DatasetError as exc:
        log.warning("validation loss disabled: %s", exc)
        return []


def encoded_source(args, pairs, info, device, dtype, stop, held_out=()):
    """A function pair-index -> encoded tensors (indices past the training pairs are the
    held-out ones); fills the on-disk cache first. `stop` is true once a stop is asked."""
    cache = encode_cache(args, info, dtype)
    savers = Savers.of(args)
    make_encoder = lambda: PairEncoder(info.path, info.pipeline_class, device, dtype,  # noqa: E731
                                       args.max_pixels, _fixed_size(args),
                                       args.edit_image_auto_resize, savers)
    pair = lambda i: pairs[i] if i < len(pairs) else held_out[i - len(pairs)]  # noqa: E731
    count = len(pairs) + len(held_out)
    if cache is None:
        encoder = make_encoder()
        return lambda i: encoder.encode(pair(i))
    # Parquet pairs were keyed while scanned; reading every image again here would double it.
    known = getattr(pairs, "keys", None)
    keys = (known if known is not None else [cache.key(p) for p in pairs]) + \
        [cache.key(p) for p in held_out]
    missing = [i for i, k in enumerate(keys) if not cache.has(k)]
    progress = EncodingProgress(args.output_path, cache, [keys[i] for i in missing], count,
                                dist.world(), writes=dist.is_main())
    dist.barrier()  # all processes agree on `missing` before anyone adds to the cache
    if missing:
        from tqdm import tqdm

        # Every process encodes its share (the cache folder is shared by all of them, as the
        # dataset is), so 8 cards encode 8x faster and nobody idles at the barrier for long.
        mine = missing[dist.rank()::dist.world()]
        if dist.is_main():
            log.info("encoding %d of %d pairs (%d cached) over %d process(es) into %s",
                     len(missing), count, count - len(missing), dist.world(), cache.root)
        if mine:
            encoder = make_encoder()
            for i in tqdm(mine, desc="encode", disable=None if dist.is_main() else True):
                if stop:
                    break  # what is encoded stays cached
                cache.save(keys[i], encoder.encode(pair(i)))
                progress.encoded_one()
            encoder.release()  # the text encoder and VAE leave the device here
            log.info("rank %d encoded its %d pair(s)", dist.rank(), len(mine))
    elif dist.is_main():
        log.info("all %d pairs found in the cache %s", count, cache.root)
    dist.barrier()
    progress.ended()
    if dist.any_true(bool(stop)):
        raise SystemExit(0)
    return lambda i: cache.load(keys[i])
