"""A manifest's JSON checked field by field (format versions 1 and 2): ``manifest_fields(raw)`` returns
the fields of a ``store.manifest.Manifest`` or raises ``ManifestError`` naming the field, what was expected
and what was found (the corpus of malformed manifests: tests/unit/store/test_manifest.py).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from fleetcast.errors import ManifestError
from fleetcast.store import schema
from fleetcast.store.index import IndexInfo
from fleetcast.store.schema import Area, ChunkRef, Extent, PackRef, valid_name

if TYPE_CHECKING:
    from fleetcast.disk.partitions import PartitionTable


def manifest_fields(raw: object) -> dict[str, Any]:
    """The checked fields of a manifest (the keyword arguments of ``Manifest``)."""
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest must be an object; found {type(raw).__name__}")
    if "version" not in raw:
        _obj(raw, "manifest", schema.TOP_KEYS)  # names every missing field
    version = raw["version"]
    if version not in schema.VERSIONS or isinstance(version, bool):
        raise ManifestError(
            f"manifest 'version' must be 1 or 2; found {version!r}",
            hint="this fleetcast reads format versions 1 and 2; a newer fleetcast wrote this image",
        )
    d = _obj(raw, "manifest", schema.TOP_KEYS if version == schema.VERSION else schema.TOP_KEYS_2)
    if d["format"] != schema.FORMAT:
        raise ManifestError(f"manifest 'format' must be {schema.FORMAT!r}; found {d['format']!r}")
    name = _str(d["name"], "manifest 'name'")
    if not valid_name(name):
        raise ManifestError(f"manifest 'name' must be 1-128 letters, digits, '.', '_' or '-'; found {name!r}")
    created = _str(d["created"], "manifest 'created'")
    tool_version = _str(d["tool_version"], "manifest 'tool_version'")
    disk = _obj(d["disk"], "manifest 'disk'", schema.DISK_KEYS)
    disk_size = _int(disk["size"], "disk.size", minimum=1)
    lss = _sector(disk["logical_sector_size"], "disk.logical_sector_size")
    pss = _sector(disk["physical_sector_size"], "disk.physical_sector_size")
    table_dict = d["table"]
    from fleetcast.disk.partitions import PartitionTable, TableError

    try:
        table = PartitionTable.from_dict(table_dict)
    except TableError as exc:
        raise ManifestError(exc.message, hint=exc.hint) from exc
    if table.sector_size != lss:
        raise ManifestError(
            f"partition table sector size {table.sector_size} differs from disk.logical_sector_size {lss}"
        )
    chunking = _obj(d["chunking"], "manifest 'chunking'", schema.CHUNKING_KEYS)
    if chunking["hash"] != schema.HASH:
        raise ManifestError(f"chunking.hash must be {schema.HASH!r}; found {chunking['hash']!r}")
    if chunking["compression"] != schema.COMPRESSION:
        raise ManifestError(
            f"chunking.compression must be {schema.COMPRESSION!r}; found {chunking['compression']!r}"
        )
    chunk_size = _int(chunking["chunk_size"], "chunking.chunk_size", minimum=schema.MIN_CHUNK_SIZE)
    if chunk_size & (chunk_size - 1) or chunk_size > schema.MAX_CHUNK_SIZE:
        raise ManifestError(
            "chunking.chunk_size must be a power of two from "
            f"{schema.MIN_CHUNK_SIZE} to {schema.MAX_CHUNK_SIZE}; found {chunk_size}"
        )
    zero_block = _int(chunking["zero_block"], "chunking.zero_block", minimum=512)
    if zero_block & (zero_block - 1) or zero_block > chunk_size:
        raise ManifestError(
            f"chunking.zero_block must be a power of two from 512 to chunk_size; found {zero_block}"
        )
    pack_size = _int(chunking["pack_size"], "chunking.pack_size", minimum=chunk_size)
    os_hint = _os_hint(d["os_hint"], "manifest 'os_hint'")
    raw_areas = d["areas"]
    if not isinstance(raw_areas, list):
        raise ManifestError(f"manifest 'areas' must be a list; found {type(raw_areas).__name__}")
    common: dict[str, Any] = dict(
        name=name,
        created=created,
        tool_version=tool_version,
        disk_size=disk_size,
        logical_sector_size=lss,
        physical_sector_size=pss,
        table_dict=table_dict,
        chunk_size=chunk_size,
        zero_block=zero_block,
        pack_size=pack_size,
        os_hint=os_hint,
    )
    if version == schema.VERSION_2:
        return _fields_v2(d, common, raw_areas, table, disk_size, lss)
    packs = _packs(d["packs"])
    areas = tuple(_area(a, i, chunk_size, disk_size, packs) for i, a in enumerate(raw_areas))
    used_packs = {c.id for a in areas for c in a.chunks}
    for pi, (pid, _) in enumerate(packs):
        if pid not in used_packs:
            raise ManifestError(f"packs[{pi}] ({pid}) is not used by any chunk")
    _check_layout(areas, table, disk_size, lss)
    return common | {"areas": areas}


def _fields_v2(  # noqa: PLR0917 -- one call site, the parts manifest_fields already checked
    d: dict[str, Any],
    common: dict[str, Any],
    raw_areas: list[Any],
    table: PartitionTable,
    disk_size: int,
    lss: int,
) -> dict[str, Any]:
    raw_packs = d["packs"]
    if not isinstance(raw_packs, list):
        raise ManifestError(f"manifest 'packs' must be a list; found {type(raw_packs).__name__}")
    packs = _packs_fast(raw_packs)
    seen: set[str] = set()
    for i, rp in enumerate(raw_packs if packs is None else ()):
        what = f"packs[{i}]"
        p = _obj(rp, what, schema.PACK_KEYS_2)
        pid, phash = _str(p["id"], f"{what}.id"), _str(p["hash"], f"{what}.hash")
        for key, v in (("id", pid), ("hash", phash)):
            if not schema.CHUNK_ID_RE.fullmatch(v):
                raise ManifestError(f"{what}.{key} must be 64 lower-case hex digits (blake3); found {v!r}")
        if pid in seen:
            raise ManifestError(f"{what}.id {pid} appears twice")
        seen.add(pid)
    if packs is None:  # the checks above found nothing wrong that the fast path saw: the same list
        packs = [PackRef(p["id"], p["stored"], p["hash"]) for p in raw_packs]
    areas = tuple(_area_v2(a, i, disk_size) for i, a in enumerate(raw_areas))
    idx = _obj(d["index"], "manifest 'index'", schema.INDEX_KEYS)
    ihash = _str(idx["hash"], "index.hash")
    if not schema.CHUNK_ID_RE.fullmatch(ihash):
        raise ManifestError(f"index.hash must be 64 lower-case hex digits (blake3); found {ihash!r}")
    info = IndexInfo(ihash, _int(idx["size"], "index.size", minimum=1), _int(idx["entries"], "index.entries"))
    entries = sum(a.entry_count for a in areas)
    if entries != info.entries:
        raise ManifestError(f"the areas hold {entries} entries but index.entries is {info.entries}")
    totals = _obj(d["totals"], "manifest 'totals'", schema.TOTALS_KEYS)
    found = {
        "used": sum(a.used for a in areas),
        "data": sum(a.data_bytes for a in areas),
        "stored": sum(p.stored for p in packs),
        "entries": entries,
        "packs": len(packs),
    }
    for key, value in found.items():
        if _int(totals[key], f"totals.{key}") != value:
            raise ManifestError(f"totals.{key} is {totals[key]} but the areas and packs add up to {value}")
    _check_layout(areas, table, disk_size, lss)
    return common | {"areas": areas, "version": schema.VERSION_2, "packs": tuple(packs), "index_info": info}


_HEX_RUN = re.compile(r"[0-9a-f]*")


def _packs_fast(raw: list[Any]) -> list[PackRef] | None:
    """The pack list when every entry is well-formed, checked in bulk (a listing of 100 images parses
    tens of thousands of entries); None when any is not, so the entry-by-entry checks name the problem."""
    ids: list[str] = []
    hashes: list[str] = []
    for rp in raw:
        if type(rp) is not dict or len(rp) != 3:
            return None
        pid, phash, stored = rp.get("id"), rp.get("hash"), rp.get("stored")
        if type(pid) is not str or type(phash) is not str or type(stored) is not int or stored < 1:
            return None
        if len(pid) != 64 or len(phash) != 64:
            return None
        ids.append(pid)
        hashes.append(phash)
    if (
        len(set(ids)) != len(ids)
        or not _HEX_RUN.fullmatch("".join(ids))
        or not _HEX_RUN.fullmatch("".join(hashes))
    ):
        return None
    return [PackRef(p, rp["stored"], h) for p, h, rp in zip(ids, hashes, raw, strict=True)]


MAX_OS_INFO = 8192  # bytes of JSON


def _os_info(v: object, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{what} must be an object; found {type(v).__name__}")
    size = len(json.dumps(v, separators=(",", ":")))
    if size > MAX_OS_INFO:
        raise ManifestError(f"{what} is {size} bytes of JSON, more than {MAX_OS_INFO}")
    return v


def _area_v2(raw: object, index: int, disk_size: int) -> Area:
    what = f"areas[{index}]"
    os_info = None
    if isinstance(raw, dict) and "os_info" in raw:
        os_info = _os_info(raw["os_info"], f"{what}.os_info")
        raw = {k: v for k, v in raw.items() if k != "os_info"}
    d = _obj(raw, what, schema.AREA_KEYS_2)
    shell = dict(d, chunks=[])
    for k in ("data", "skipped", "entries"):
        shell.pop(k)
    base = _area(shell, index, schema.MIN_CHUNK_SIZE, disk_size, [])
    data = _int(d["data"], f"{what}.data")
    skipped = _int(d["skipped"], f"{what}.skipped")
    entries = _int(d["entries"], f"{what}.entries")
    zeros = sum(n for _, n in base.zeros)
    if base.used != data + zeros + skipped:
        raise ManifestError(
            f"{what}.used ({base.used}) is not data ({data}) + zeros ({zeros}) + skipped ({skipped})"
        )
    if (data == 0) != (entries == 0):
        raise ManifestError(f"{what} has {entries} entries for {data} bytes of data")
    return Area(
        base.kind,
        base.number,
        base.start,
        base.size,
        base.fstype,
        base.os_hint,
        base.used,
        (),
        base.zeros,
        data=data,
        skipped=skipped,
        entries=entries,
        os_info=os_info,
    )


def _obj(v: object, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{what} must be an object; found {type(v).__name__}")
    missing = [k for k in keys if k not in v]
    if missing:
        raise ManifestError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    extra = sorted(str(k) for k in v if k not in keys)
    if extra:
        raise ManifestError(f"{what} has unknown fields {', '.join(repr(k) for k in extra)}")
    return v


def _int(v: object, what: str, *, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ManifestError(f"{what} must be an integer; found {v!r}")
    if v < minimum:
        raise ManifestError(f"{what} must be at least {minimum}; found {v}")
    return v


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"{what} must be a string; found {v!r}")
    return v


def _sector(v: object, what: str) -> int:
    n = _int(v, what, minimum=512)
    if n & (n - 1) or n > 65536:
        raise ManifestError(f"{what} must be a power of two from 512 to 65536; found {n}")
    return n


def _os_hint(v: object, what: str) -> str | None:
    if v is not None and v not in schema.OS_HINTS:
        raise ManifestError(f"{what} must be null, 'windows' or 'linux'; found {v!r}")
    return v if isinstance(v, str) else None


def _extent(v: object, what: str) -> Extent:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        raise ManifestError(f"{what} must be [offset, length] integers; found {v!r}")
    off, length = v
    if off < 0 or length <= 0:
        raise ManifestError(f"{what} must have offset >= 0 and length > 0; found {v!r}")
    return off, length


def _packs(raw: object) -> list[tuple[str, int]]:
    if not isinstance(raw, list):
        raise ManifestError(f"manifest 'packs' must be a list; found {type(raw).__name__}")
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i, rp in enumerate(raw):
        what = f"packs[{i}]"
        p = _obj(rp, what, schema.PACK_KEYS)
        pid = _str(p["id"], f"{what}.id")
        if not schema.CHUNK_ID_RE.fullmatch(pid):
            raise ManifestError(f"{what}.id must be 64 lower-case hex digits (blake3); found {pid!r}")
        if pid in seen:
            raise ManifestError(f"{what}.id {pid} appears twice")
        seen.add(pid)
        out.append((pid, _int(p["stored"], f"{what}.stored", minimum=1)))
    return out


def _area(raw: object, index: int, chunk_size: int, disk_size: int, packs: list[tuple[str, int]]) -> Area:
    what = f"areas[{index}]"
    d = _obj(raw, what, schema.AREA_KEYS)
    kind = d["kind"]
    if kind not in schema.AREA_KINDS:
        raise ManifestError(f"{what}.kind must be one of {', '.join(schema.AREA_KINDS)}; found {kind!r}")
    number = d["number"]
    if kind == "partition":
        number = _int(number, f"{what}.number", minimum=1)
    elif number is not None:
        raise ManifestError(f"{what}.number must be null for a {kind}; found {number!r}")
    start = _int(d["start"], f"{what}.start")
    size = _int(d["size"], f"{what}.size", minimum=1)
    if start + size > disk_size:
        raise ManifestError(
            f"{what} ends at byte {start + size}, beyond the end of the disk ({disk_size} bytes)"
        )
    fstype = d["fstype"]
    if fstype not in schema.FSTYPES:
        raise ManifestError(f"{what}.fstype must be one of {', '.join(schema.FSTYPES)}; found {fstype!r}")
    os_hint = _os_hint(d["os_hint"], f"{what}.os_hint")
    used = _int(d["used"], f"{what}.used")
    if used > size:
        raise ManifestError(f"{what}.used ({used}) is larger than the area ({size} bytes)")
    raw_chunks = d["chunks"]
    if not isinstance(raw_chunks, list):
        raise ManifestError(f"{what}.chunks must be a list; found {type(raw_chunks).__name__}")
    chunks: list[ChunkRef] = []
    prev_end = 0
    prev_window = -1
    for ci, rc in enumerate(raw_chunks):
        cw = f"{what}.chunks[{ci}]"
        c = _obj(rc, cw, schema.CHUNK_KEYS)
        pack = _int(c["pack"], f"{cw}.pack")
        if pack >= len(packs):
            raise ManifestError(f"{cw}.pack {pack} is not in 'packs' ({len(packs)} entries)")
        cid, stored = packs[pack]
        chash = _str(c["hash"], f"{cw}.hash")
        if not schema.CHUNK_ID_RE.fullmatch(chash):
            raise ManifestError(f"{cw}.hash must be 64 lower-case hex digits (blake3); found {chash!r}")
        offset = _int(c["offset"], f"{cw}.offset")
        window = _int(c["window"], f"{cw}.window")
        if window % chunk_size:
            raise ManifestError(
                f"{cw}.window must be a multiple of the chunk size {chunk_size}; found {window}"
            )
        if window <= prev_window:
            raise ManifestError(
                f"{cw}.window must be larger than the previous chunk's ({prev_window}); found {window}"
            )
        if window >= size:
            raise ManifestError(f"{cw}.window {window} is outside the area ({size} bytes)")
        prev_window = window
        raw_ext = c["extents"]
        if not isinstance(raw_ext, list) or not raw_ext:
            raise ManifestError(f"{cw}.extents must be a non-empty list; found {raw_ext!r}")
        extents: list[Extent] = []
        for ei, re_ in enumerate(raw_ext):
            ew = f"{cw}.extents[{ei}]"
            off, length = _extent(re_, ew)
            if off < prev_end:
                raise ManifestError(
                    f"{ew} starts at {off}, before the end of the previous extent ({prev_end})"
                )
            if off < window or off + length > min(window + chunk_size, size):
                raise ManifestError(
                    f"{ew} [{off}, {off + length}) is outside its window "
                    f"[{window}, {min(window + chunk_size, size)})"
                )
            prev_end = off + length
            extents.append((off, length))
        chunks.append(ChunkRef(cid, chash, offset, window, tuple(extents), stored))
    raw_zeros = d["zeros"]
    if not isinstance(raw_zeros, list):
        raise ManifestError(f"{what}.zeros must be a list; found {type(raw_zeros).__name__}")
    zeros: list[Extent] = []
    zend = 0
    for zi, rz in enumerate(raw_zeros):
        zw = f"{what}.zeros[{zi}]"
        off, length = _extent(rz, zw)
        if off < zend:
            raise ManifestError(f"{zw} starts at {off}, before the end of the previous range ({zend})")
        if off + length > size:
            raise ManifestError(f"{zw} [{off}, {off + length}) is outside the area ({size} bytes)")
        zend = off + length
        zeros.append((off, length))
    return Area(kind, number, start, size, fstype, os_hint, used, tuple(chunks), tuple(zeros))


def _check_layout(areas: tuple[Area, ...], table: PartitionTable, disk_size: int, lss: int) -> None:
    """Areas sorted and disjoint; partition areas match the table; a 'disk' area only without a table."""
    end = 0
    for i, area in enumerate(areas):
        if area.start < end:
            raise ManifestError(
                f"areas[{i}] ({area.label}) starts at byte {area.start}, "
                f"inside the previous area (ends at {end})"
            )
        end = area.start + area.size
        if area.kind == "disk" and (table.label != "none" or area.start != 0 or area.size != disk_size):
            raise ManifestError(
                f"areas[{i}]: a 'disk' area must cover the whole disk of an unpartitioned image"
            )
        if area.kind == "partition":
            assert area.number is not None
            try:
                part = table.partition(area.number)
            except Exception as exc:
                raise ManifestError(
                    f"areas[{i}]: partition {area.number} is not in the partition table"
                ) from exc
            if (part.start * lss, part.size * lss) != (area.start, area.size):
                raise ManifestError(
                    f"areas[{i}]: partition {area.number} is at bytes "
                    f"[{area.start}, {area.start + area.size}) "
                    f"but the table puts it at [{part.start * lss}, {part.end * lss})"
                )
