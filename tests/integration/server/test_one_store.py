"""One store for every command (issue 7): `--data D` means `D/store` for image capture, image list,
store gc and serve alike, unless --store is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from servekit import cli, serve

pytestmark = pytest.mark.integration


def _raw_disk(path: Path) -> Path:
    with path.open("wb") as fh:
        fh.truncate(4 << 20)
        fh.seek(1 << 20)
        fh.write(os.urandom(1 << 20))
    return path


def test_data_dir_means_data_store_for_every_command(tmp_path: Path) -> None:
    data = tmp_path / "D"
    raw = _raw_disk(tmp_path / "disk.raw")
    cli("--data", str(data), "image", "capture", str(raw), "one")
    assert (data / "store" / "images").is_dir()
    listed = json.loads(cli("image", "list", "--data", str(data), "--json").stdout)
    assert [i["name"] for i in listed] == ["one"]
    gc = json.loads(cli("--data", str(data), "store", "gc", "--json").stdout)
    assert gc["store"] == str(data / "store")
    with serve(data) as server:
        assert [i["name"] for i in server.get("/api/images")["images"]] == ["one"]
    other = tmp_path / "S"
    cli("--data", str(data), "image", "capture", str(raw), "two", "--store", str(other))
    listed = json.loads(cli("--data", str(data), "image", "list", "--store", str(other), "--json").stdout)
    assert [i["name"] for i in listed] == ["two"]
