"""The Dataset tab's attached parquet source, served and driven through its HTTP API."""
import pytest

from tests.test_dataset_tab import serve_dataset_tab
from tests.test_parquet_in_place import write_shards


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve_dataset_tab(tmp_path_factory.mktemp("panel") / "projects")


def test_attach_sample_and_detach_a_parquet_source(served, tmp_path):
    client, store = served
    shards = write_shards(tmp_path / "shards")
    status, rows = client.predict("default", str(shards / "*.parquet"), "", api_name="/dataset_attach")
    assert "2 file(s), 6 rows, UltraEdit layout; 4 of 6 checked rows can train" in status
    assert "- shard-00.parquet row 1: source_image: truncated" in status
    table = rows["data"]
    assert len(table) == 6 and table[0][:4] == ["shard-00.parquet row 0", "0",
                                                "source 64×64, target 64×64", "make it brighter, 0"]
    assert table[1][4].startswith("cannot train: ") and table[0][4] == ""
    assert store.sources.get("default")["parquet"] == str(shards / "*.parquet")

    # Sampled again; and on a project change (or reload) the record is shown.
    rows = client.predict("default", 2, False, api_name="/dataset_source_sample")
    assert [r[0] for r in rows["data"]] == ["shard-00.parquet row 0", "shard-00.parquet row 1"]
    status, _ = client.predict("default", api_name="/dataset_source")
    assert "6 rows" in status and str(shards) in status

    status, rows = client.predict("default", api_name="/dataset_detach")
    assert "Detached" in status and rows["data"] == []
    assert store.sources.get("default") is None


@pytest.mark.parametrize("where, message", [("etc/passwd", "only parquet files can be attached"),
                                            ("folder", "no parquet files at"),
                                            ("*.parquet", "no parquet files at")])
def test_paths_that_name_no_parquet_file_are_refused(served, tmp_path, where, message):
    client, store = served
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0 secret")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("secret")
    with pytest.raises(Exception, match=message) as refused:
        client.predict("default", str(tmp_path / where), "", api_name="/dataset_attach")
    assert "secret" not in str(refused.value)
    assert store.sources.get("default") is None
