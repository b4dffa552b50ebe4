import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio.dataset import importers
from tests.dataset_helpers import jpeg, store  # noqa: F401 (fixture)

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def ultraedit(path, rows=10, row_group_size=4, broken=()):
    table = pa.table({
        "idx": pa.array(range(100, 100 + rows), pa.int64()),
        "edit_prompt": [f"edit number {n}" for n in range(rows)],
        "source_image": pa.array([{"bytes": (jpeg(n)[:200] if n in broken else jpeg(n)), "path": None}
                                  for n in range(rows)], IMAGE),
        "edited_image": pa.array([{"bytes": jpeg(n + 50), "path": None} for n in range(rows)], IMAGE),
        "clip_sim_source": [0.1 * n for n in range(rows)],
        "ssim": [0.5] * rows,
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_ultraedit_rows_with_ids_scores_and_layout_note(store, tmp_path):
    report = importers.import_parquet(store, "p", ultraedit(tmp_path / "u.parquet"))
    assert report.added == 10 and "UltraEdit layout" in report.notes[0]
    first = store.pairs.page("p")[0]
    assert first["sample_id"] == "100" and first["instruction"] == "edit number 0"
    assert first["meta"]["scores"] == {"clip_sim_source": 0.0, "ssim": 0.5}


def test_limit_offset_score_filter_and_progress(store, tmp_path):
    seen = []
    report = importers.import_parquet(
        store, "p", ultraedit(tmp_path / "u.parquet"), offset=3, limit=6,
        min_scores=["clip_sim_source=0.45"], progress=lambda done, total: seen.append((done, total)))
    ids = [p["sample_id"] for p in store.pairs.page("p")]
    assert ids == ["105", "106", "107", "108"]  # rows 3..8, of which clip_sim >= 0.45 from row 5
    assert report.filtered == 2
    assert seen[-1] == (6, 6)


def test_bad_parquet_rows_are_reported_by_row(store, tmp_path):
    report = importers.import_parquet(store, "p", ultraedit(tmp_path / "u.parquet", broken=(2, 7)))
    assert report.added == 8
    assert [row for row, _ in report.errors] == ["u.parquet row 2", "u.parquet row 7"]
    assert "truncated or corrupt" in report.errors[0][1]


def test_instructpix2pix_and_magicbrush_layouts(store, tmp_path):
    pq.write_table(pa.table({"input_image": pa.array([{"bytes": jpeg(1), "path": None}], IMAGE),
                             "edited_image": pa.array([{"bytes": jpeg(2), "path": None}], IMAGE),
                             "edit_prompt": ["ip2p"]}), tmp_path / "ip2p.parquet")
    pq.write_table(pa.table({"img_id": ["m1"], "turn_index": [1],
                             "source_img": pa.array([{"bytes": jpeg(3), "path": None}], IMAGE),
                             "target_img": pa.array([{"bytes": jpeg(4), "path": None}], IMAGE),
                             "instruction": ["magic"]}), tmp_path / "mb.parquet")
    a = importers.import_parquet(store, "p", tmp_path / "ip2p.parquet")
    b = importers.import_parquet(store, "p", tmp_path / "mb.parquet")
    assert "InstructPix2Pix" in a.notes[0] and "MagicBrush" in b.notes[0]
    assert {p["instruction"] for p in store.pairs.page("p")} == {"ip2p", "magic"}


def test_explicit_columns_raw_bytes_and_paths(store, tmp_path):
    (tmp_path / "before.jpg").write_bytes(jpeg(1))
    pq.write_table(pa.table({"a": ["before.jpg"], "b": [jpeg(2)], "words": ["mapped"], "key": ["k1"]}),
                   tmp_path / "custom.parquet")
    with pytest.raises(ValueError, match="--columns"):
        importers.import_parquet(store, "p", tmp_path / "custom.parquet")
    report = importers.import_parquet(store, "p", tmp_path / "custom.parquet",
                                      columns="source=a,target=b,prompt=words,id=key")
    assert report.added == 1 and store.pairs.page("p")[0]["sample_id"] == "k1"
    with pytest.raises(ValueError, match="no numeric column"):
        importers.import_parquet(store, "p", tmp_path / "custom.parquet",
                                 columns="source=a,target=b,prompt=words", min_scores=["nope=1"])
