"""The ``isic`` source through the real isic-cli (``--dev``) against a local ISIC Archive API.

The server (tests/_isic_archive.py) serves the ISIC and HAM10000 images of ../shared/data the way the
archive's API v2 does; nothing here fakes isic-cli itself.
"""

from __future__ import annotations

import socket

import pandas as pd
import pytest
from _isic_archive import HAM10000_COLLECTION, HOST, PORT, Archive, Server, catalogue

from dermsynth import io
from dermsynth.data import acquire
from dermsynth.errors import DataSourceError

CLASSES = ["benign", "malignant"]
QUERIES = {"benign": 'diagnosis_1:"Benign"', "malignant": 'diagnosis_1:"Malignant"'}
#: what a manifest says of an image, whichever source brought it (paths differ by design)
SAME = ["source_id", "label", "sha256", "width", "height", "lesion_id"]


@pytest.fixture
def records(shared_data):
    return catalogue(shared_data)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """isic-cli's login tokens live under HOME: a test must not use (or change) the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    with socket.socket() as s:
        if s.connect_ex((HOST, PORT)) == 0:
            pytest.fail(f"{HOST}:{PORT} is taken: isic-cli --dev only talks to that address")


def isic_spec(per_class: int, collections: str | None = None, timeout_s: int = 120) -> dict:
    return {
        "source": "isic",
        "isic": {
            "env": "dev",
            "search": "image_type:dermoscopic",
            "per_class": per_class,
            "collections": collections,
            "timeout_s": timeout_s,
            "class_queries": QUERIES,
        },
    }


def fetch(name, spec, tmp_path, out):
    d = tmp_path / out
    m = acquire(name, spec, d / "raw", d / "manifest.csv", d / "rejected.csv", 0, CLASSES)
    return m, io.read_csv(d / "rejected.csv")


def served(records: list[dict], manifest: pd.DataFrame) -> list[dict]:
    by_id = {r["isic_id"]: r for r in records}
    return [by_id[i] for i in manifest["source_id"]]


def folder_import_of(recs: list[dict], tmp_path, name: str) -> pd.DataFrame:
    """The same files through ``source: folder`` (a labels CSV with the archive's lesion ids)."""
    rows = [
        {
            "path": str(r["path"]),
            "label": r["metadata"]["clinical"]["benign_malignant"],
            "source_id": r["isic_id"],
            "lesion_id": r["metadata"]["clinical"].get("lesion_id", ""),
        }
        for r in recs
    ]
    csv = tmp_path / f"{name}_labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    m, _ = fetch(name, {"source": "folder", "folder": {"csv": str(csv)}}, tmp_path, f"{name}_folder")
    return m


def same(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    key = ["source_id"]
    return a[SAME].sort_values(key).reset_index(drop=True), b[SAME].sort_values(key).reset_index(drop=True)


def test_isic_cli_pages_retries_a_failed_file_and_equals_a_folder_import(records, tmp_path):
    ham_ids = [r["isic_id"] for r in records if HAM10000_COLLECTION in r["collections"]]
    benign_isic = [
        r["isic_id"]
        for r in records
        if not r["collections"] and r["metadata"]["clinical"]["diagnosis_1"] == "Benign"
    ]
    archive = Archive(records, page_size=4, fail_once={benign_isic[1], ham_ids[2]})
    with Server(archive):
        isic_m, isic_rej = fetch("isic", isic_spec(per_class=10), tmp_path, "isic")
        ham_m, ham_rej = fetch(
            "ham10000", isic_spec(per_class=6, collections=HAM10000_COLLECTION), tmp_path, "ham"
        )

    # paging through `next`: 10 per class at 4 a page is 3 pages per ISIC class, 6 is 2 per HAM class
    pages = [p for m, p, s in archive.requests if "/images/search/?" in p and "limit=1" not in p]
    assert [sum(f"cursor={k}" in p for p in pages) for k in (1, 2, 3)] == [4, 2, 0]
    assert len(pages) == 10
    assert isic_m["label"].value_counts().to_dict() == {"benign": 10, "malignant": 10}
    assert ham_m["label"].value_counts().to_dict() == {"benign": 6, "malignant": 6}
    assert set(ham_m["source_id"]) <= set(ham_ids) and not set(isic_m["source_id"]) & set(ham_ids)
    assert isic_rej.empty and ham_rej.empty
    # the file that failed once was asked again and is in the set
    for failed in (benign_isic[1], ham_ids[2]):
        assert (
            archive.files_requested().count(failed) == 2 and archive.files_requested(500).count(failed) == 1
        )
    assert {benign_isic[1], ham_ids[2]} <= set(isic_m["source_id"]) | set(ham_m["source_id"])
    # HAM10000 metadata (lesion ids) and every image's licence came through isic-cli's metadata.csv
    assert ham_m["lesion_id"].str.startswith("HAM_").all()
    by_id = {r["isic_id"]: r["copyright_license"] for r in records}
    for m in (isic_m, ham_m):
        assert list(m["license"]) == [by_id[i] for i in m["source_id"]]

    for name, m in (("isic", isic_m), ("ham10000", ham_m)):
        a, b = same(m, folder_import_of(served(records, m), tmp_path, name))
        pd.testing.assert_frame_equal(a, b)


def test_server_error_mid_run_fails_clearly_and_a_rerun_resumes(records, tmp_path):
    benign = [
        r["isic_id"]
        for r in records
        if not r["collections"] and r["metadata"]["clinical"]["diagnosis_1"] == "Benign"
    ]
    archive = Archive(records, page_size=4, broken_files=set(benign[5:8]), broken=True)
    spec = isic_spec(per_class=8, timeout_s=10)
    with Server(archive):
        with pytest.raises(DataSourceError) as e:
            fetch("isic", spec, tmp_path, "run")
        msg = str(e.value)
        assert (
            "\n" not in msg
            and "isic-cli did not finish for isic/benign within 10 s" in msg
            and "rerun" in msg
        )
        raw = tmp_path / "run" / "raw" / "isic_raw" / "benign"
        first = sorted(p.stem for p in raw.glob("*.jpg"))
        assert first == benign[:5]  # what finished before the error is kept, partial files are not
        assert not list(raw.glob(".isic-partial*"))

        archive.broken = False
        archive.requests.clear()
        m, rej = fetch("isic", spec, tmp_path, "run")
    again = archive.files_requested()
    assert not set(again) & set(first)  # resumed: the files it had were not fetched again
    assert sorted(m[m.label == "benign"]["source_id"]) == benign[:8] and rej.empty
    a, b = same(m, folder_import_of(served(records, m), tmp_path, "isic"))
    pd.testing.assert_frame_equal(a, b)


def test_a_query_the_archive_refuses_is_one_line_naming_the_http_error(records, tmp_path):
    spec = isic_spec(per_class=2)
    spec["isic"]["class_queries"] = {**QUERIES, "malignant": 'diagnosis_1:"Malignant" AND ('}
    with Server(Archive(records)):
        with pytest.raises(DataSourceError) as e:
            fetch("isic", spec, tmp_path, "bad")
    msg = str(e.value)
    assert "\n" not in msg and "for isic/malignant" in msg and "400 Client Error" in msg
