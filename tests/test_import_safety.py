"""Imports that must not leak server files or exhaust memory: tables in an upload reach only
the files uploaded with them (issue 19, defect 2), a corrupt zip member is reported alone
(defect 5), and a zip bomb is refused before it is inflated (defect 6)."""
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gradio_client import handle_file

from studio.cli import main
from studio.dataset import importers
from studio.dataset.sources import ZipFiles
from tests.app_process import ROOT
from tests.dataset_helpers import jpeg, store, write_pair  # noqa: F401 (fixture)
from tests.test_dataset_tab import serve_dataset_tab


@pytest.fixture
def server_files(tmp_path):
    """Files on the server, outside any upload: a picture, a secret, and a path that is not there."""
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "private.jpg").write_bytes(jpeg(7))
    (folder / "shadow").write_text("root:$6$saltsalt$hash:19000:0:99999:7:::\n")
    return {"image": str(folder / "private.jpg"), "secret": str(folder / "shadow"),
            "missing": str(folder / "nothing-here.jpg"),
            "climbing": "../server/private.jpg"}  # relative to the upload's own folder


def table_upload(folder: Path, references: list[str]) -> Path:
    """A CSV whose rows each name one reference as both images (the only problem of the row)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metadata_edit.csv"
    path.write_text("image,edit_image,prompt\n" + "".join(f"{r},{r},leak\n" for r in references))
    return path


def images_stored(store, project="p") -> list[Path]:
    return [p for p in (store.project_dir(project) / "images").rglob("*") if p.is_file()]


def reasons_without_references(errors, references) -> set[str]:
    """The rejection reasons with each row's own reference text taken out."""
    return {reason.replace(ref, "REF") for (_, reason), ref in zip(errors, references)}


# -- defect 2: an uploaded table reaches only the files uploaded with it ------------------

def test_an_uploaded_table_cannot_pull_server_files(store, tmp_path, server_files):
    references = list(server_files.values())
    upload = table_upload(tmp_path / "upload", references)
    report = importers.import_uploads(store, "p", [upload])
    assert report.added == 0 and len(report.errors) == len(references)
    assert reasons_without_references(report.errors, references) == {
        "not among the uploaded files: REF, REF"}
    assert images_stored(store) == []


def test_an_uploaded_table_reads_the_images_uploaded_with_it(store, tmp_path):
    write_pair(tmp_path / "upload", "source_0.jpg", "edited_0.jpg")
    records = [{"image": "images/edited_0.jpg", "edit_image": "images/source_0.jpg", "prompt": "p"}]
    (tmp_path / "upload" / "meta.jsonl").write_text(json.dumps(records[0]) + "\n")
    report = importers.import_uploads(store, "p", [tmp_path / "upload" / n for n in
                                                   ("meta.jsonl", "source_0.jpg", "edited_0.jpg")])
    assert report.added == 1 and not report.errors


def test_an_uploaded_parquet_cannot_name_server_files(store, tmp_path, server_files):
    references = list(server_files.values())
    path = tmp_path / "upload" / "u.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"source_image": references, "edited_image": references,
                             "edit_prompt": ["leak"] * len(references)}), path)
    report = importers.import_uploads(store, "p", [path])
    assert report.added == 0 and len(report.errors) == len(references)
    assert reasons_without_references(report.errors, references) == {
        "source_image: not among the uploaded files: REF"}
    assert images_stored(store) == []


def test_a_table_on_disk_reads_local_paths_only_when_the_caller_allows(store, tmp_path, projects):
    write_pair(tmp_path / "elsewhere", "source_0.jpg", "edited_0.jpg")
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "ds").mkdir()
    table = tmp_path / "ds" / "metadata_edit.csv"
    table.write_text(f"image,edit_image,prompt\n{elsewhere}/edited_0.jpg,../elsewhere/source_0.jpg,x\n")
    refused = importers.import_metadata(store, "p", table)
    assert refused.added == 0 and "not found in" in refused.errors[0][1]
    assert importers.import_metadata(store, "p", table, allow_local_paths=True).added == 1
    # The CLI is run by the user whose files they are: it reads their local paths.
    assert main(["--projects-dir", str(projects), "project", "create", "cli"]) == 0
    assert main(["--projects-dir", str(projects), "dataset", "import", "--project", "cli",
                 "--csv", str(table)]) == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve_dataset_tab(tmp_path_factory.mktemp("safety") / "projects")


def test_the_dataset_tab_gives_one_answer_for_any_server_path(served, tmp_path, server_files):
    client, store = served
    references = [server_files["image"], server_files["secret"], server_files["missing"],
                  "/etc/passwd", "/no/such/file"]
    upload = table_upload(tmp_path / "upload", references)
    report, *_ = client.predict("default", [handle_file(str(upload))], 0, 0, "", "", "", 1,
                                api_name="/dataset_import")
    rejected = [line.split(": ", 2)[2] for line in report.splitlines() if line.startswith("rejected: ")]
    assert len(rejected) == len(references)
    assert {line.replace(ref, "REF") for line, ref in zip(rejected, references)} == {
        "not among the uploaded files: REF, REF"}
    assert store.pairs.count("default") == 0 and images_stored(store, "default") == []


# -- defect 5: a corrupt zip member is named, the other pairs are kept ---------------------

def corrupt(archive: Path, member: str) -> None:
    """Flip bytes in the middle of one member's stored data, so its CRC (or inflate) fails."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    middle = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
@pytest.mark.parametrize("bad", ["source_2.jpg", "2.txt"])
def test_a_corrupt_zip_member_is_named_and_the_other_pairs_kept(store, tmp_path, compression, bad):
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w", compression) as z:
        for n in range(4):
            z.writestr(f"source_{n}.jpg", jpeg(n))
            z.writestr(f"edited_{n}.jpg", jpeg(n + 10))
            z.writestr(f"{n}.txt", f"instruction number {n} " * 20)
    corrupt(archive, bad)
    report = importers.import_zip(store, "p", archive)
    assert report.added == 3
    assert [row for row, _ in report.errors] == ["pair 2"] and bad in report.errors[0][1]
    assert "corrupt" in report.errors[0][1]


def test_a_corrupt_table_in_a_zip_is_named_and_the_files_still_pair(store, tmp_path):
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for n in range(2):
            z.writestr(f"source_{n}.jpg", jpeg(n))
            z.writestr(f"edited_{n}.jpg", jpeg(n + 10))
        z.writestr("metadata_edit.csv", "image,edit_image,prompt\n"
                   + "".join(f"edited_{n}.jpg,source_{n}.jpg,edit {n}\n" for n in range(40)))
    corrupt(archive, "metadata_edit.csv")
    report = importers.import_zip(store, "p", archive)
    assert report.added == 2
    assert [row for row, _ in report.errors] == ["metadata_edit.csv"] and "corrupt" in report.errors[0][1]


# -- defect 6: a zip's total inflated size is limited; a member is inflated only so far ----

# The peak is VmHWM, this process's own: ru_maxrss would count the pytest process it forked from.
BOMB_IMPORT = """
import re, sys
from pathlib import Path
from studio.dataset import importers
from studio.store import Store
store = Store(sys.argv[1]); store.create_project("p")
try:
    print("\\n".join(importers.import_uploads(store, "p", [sys.argv[2]]).lines()))
except ValueError as exc:
    print("refused:", exc)
print("peak MB", int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) // 1024)
"""


def zeros_zip(path: Path, members: dict[str, int]) -> Path:
    """A zip of members holding only zeros: tiny on disk, `members[name]` bytes inflated."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, size in members.items():
            with z.open(name, "w") as member:
                for _ in range(size >> 20):
                    member.write(chunk)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc")
def test_a_small_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = zeros_zip(tmp_path / "bomb.zip", {f"{role}_{n}.png": 250 << 20
                                             for n in "ab" for role in ("source", "edited")})
    assert bomb.stat().st_size < 2 << 20
    done = subprocess.run([sys.executable, "-c", BOMB_IMPORT, str(tmp_path / "projects"), str(bomb)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *lines, peak = done.stdout.splitlines()
    assert lines[0].startswith("refused: ") and "1,048,576,000 bytes" in lines[0]
    assert "over the limit" in lines[0]
    assert int(peak.split()[-1]) < 300, done.stdout


def test_a_member_is_inflated_only_up_to_its_limit(store, tmp_path):
    archive = zeros_zip(tmp_path / "big.zip", {"source_a.png": 8 << 20})
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("edited_a.png", jpeg(1))
    files = ZipFiles(archive, max_member=1 << 20)
    report = importers.import_fileset(store, "p", files)
    assert report.added == 0 and "1,048,576-byte limit" in report.errors[0][1]


def test_the_total_limit_counts_every_member_read(store, tmp_path):
    """A table may name one member many times; every read counts against the total."""
    archive = tmp_path / "reused.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("s.jpg", jpeg(1))
        for n in range(6):
            z.writestr(f"t{n}.jpg", jpeg(n + 2))
        z.writestr("metadata_edit.csv", "image,edit_image,prompt\n"
                   + "".join(f"t{n}.jpg,s.jpg,edit {n}\n" for n in range(6)))
    with zipfile.ZipFile(archive) as z:
        declared = sum(info.file_size for info in z.infolist())
    files = ZipFiles(archive, max_total=declared + 2 * len(jpeg(1)))  # 6 more reads than members
    report = importers.import_fileset(store, "p", files)
    assert 0 < report.added < 6 and report.errors
    assert all("in all, over the limit" in reason for _, reason in report.errors)
