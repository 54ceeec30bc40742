"""Source files as row tables: length known up front, rows streamed in order, any row read again by index.

Why not `datasets.load_dataset`: its map-style mode copies every parquet row, image bytes included, into an
Arrow cache before the first row is available (a full conversion before step 1), and its streaming mode has
no random access, which a shuffled, resumable training order needs. The parquet and Arrow files of a Hub
snapshot are read here with pyarrow (what `datasets` reads them with): the row count comes from the footer,
rows are streamed batch by batch (bounded memory), and one row is read again through its row group.
JSON arrays are loaded whole (their own tools do the same); JSONL keeps only line offsets.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from pathlib import Path
from typing import Iterator

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")
NOT_DATA = {"dataset_info.json", "dataset_infos.json", "state.json", "manifest.json"}


def data_files(src: str | Path) -> list[Path]:
    """The data files of a snapshot folder (or the file itself): one suffix, the train split when named.

    A Hub snapshot keeps splits side by side (`data/train-00000-of-00002.parquet`, `data/test-...`): files
    whose name says `train` are taken when there are any, so a test split is not trained on by accident.
    """
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"no such file or folder {str(src)!r}")
    found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES and p.name not in NOT_DATA
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    for suffix in DATA_SUFFIXES:  # the first kind present, in this order
        files = [p for p in found if p.suffix == suffix]
        if files:
            train = [p for p in files if "train" in p.name]
            return train or files
    raise FileNotFoundError(f"{src}: no data files ({', '.join(DATA_SUFFIXES)})")


class Table:
    """Rows of one or more files. Subclasses give `__len__`, `iter_rows(columns)` and `row(i)`."""

    files: list[Path]

    def light_columns(self, heavy: tuple[str, ...]) -> list[str] | None:
        """The columns a validation pass reads (None: all; only parquet can leave bytes unread)."""
        return None

    def where(self, i: int) -> str:
        """"file row N" of row `i` (0-based within its file), for messages and the manifest."""
        return f"{self.files[0]} row {i}"

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: open handles are reopened there
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h")}


class ParquetTable(Table):
    """Parquet files (a Hub snapshot's shards), read with pyarrow."""

    def __init__(self, files: list[Path]):
        import pyarrow.parquet as pq

        self.files = files
        self.counts, self.groups = [], []  # rows per file; per file, the first row of each row group
        for f in files:
            meta = pq.ParquetFile(f).metadata
            starts, total = [], 0
            for g in range(meta.num_row_groups):
                starts.append(total)
                total += meta.row_group(g).num_rows
            self.counts.append(total)
            self.groups.append(starts)
        self.starts = [sum(self.counts[:k]) for k in range(len(files))]
        self.columns = [n for n in pq.ParquetFile(files[0]).schema_arrow.names]

    def light_columns(self, heavy: tuple[str, ...]) -> list[str]:
        """All columns, with embedded-media columns (`heavy`) cut to their `path` field: a validation read
        without the image bytes, with the number of images per row intact."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema, out = pq.ParquetFile(self.files[0]).schema_arrow, []
        for name in schema.names:
            t = schema.field(name).type
            if name in heavy and pa.types.is_struct(t) and t.get_field_index("path") >= 0:
                out.append(f"{name}.path")
            elif name in heavy and pa.types.is_list(t) and pa.types.is_struct(t.value_type) \
                    and t.value_type.get_field_index("path") >= 0:
                out.append(f"{name}.list.element.path")
            else:
                out.append(name)
        return out

    def __len__(self) -> int:
        return sum(self.counts)

    def _locate(self, i: int) -> tuple[int, int]:
        k = bisect_right(self.starts, i) - 1
        return k, i - self.starts[k]

    def where(self, i: int) -> str:
        k, j = self._locate(i)
        return f"{self.files[k]} row {j}"

    def iter_rows(self, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
        import pyarrow.parquet as pq

        for f in self.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
                yield from batch.to_pylist()

    def row(self, i: int) -> dict:
        import pyarrow.parquet as pq

        k, j = self._locate(i)
        g = bisect_right(self.groups[k], j) - 1
        cache = self.__dict__.setdefault("_hcache", {})
        if cache.get("key") != (k, g):  # one row group kept: a shuffled order rereads, memory stays bounded
            cache.clear()
            cache.update(key=(k, g), table=pq.ParquetFile(self.files[k]).read_row_group(g))
        return cache["table"].slice(j - self.groups[k][g], 1).to_pylist()[0]


class ArrowTable(Table):
    """Arrow IPC stream files (`datasets`' `save_to_disk` / cache files), memory-mapped, not loaded."""

    def __init__(self, files: list[Path]):
        self.files = files
        tables = [self._open(f) for f in files]
        self.counts = [t.num_rows for t in tables]
        self.starts = [sum(self.counts[:k]) for k in range(len(files))]
        self.columns = tables[0].column_names

    @staticmethod
    def _open(path: Path):
        import pyarrow as pa

        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()

    def __len__(self) -> int:
        return sum(self.counts)

    def iter_rows(self, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
        for f in self.files:
            table = self._open(f)
            if columns:
                table = table.select(columns)
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield from batch.to_pylist()

    def row(self, i: int) -> dict:
        k = bisect_right(self.starts, i) - 1
        tables = self.__dict__.setdefault("_htables", {})
        if k not in tables:
            tables[k] = self._open(self.files[k])
        return tables[k].slice(i - self.starts[k], 1).to_pylist()[0]

    def where(self, i: int) -> str:
        k = bisect_right(self.starts, i) - 1
        return f"{self.files[k]} row {i - self.starts[k]}"


class JsonTable(Table):
    """A JSON array file (LLaMA-Factory, LLaVA, POVID), or a JSON object of rows keyed by id (HA-DPO)."""

    def __init__(self, files: list[Path], key_name: str = "key"):
        self.files = files
        self.rows: list = []
        self.origin: list[tuple[int, int]] = []
        for k, f in enumerate(files):
            try:
                data = json.loads(Path(f).read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{f}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
            if isinstance(data, dict):  # {id: row}: the id becomes a column
                data = [{key_name: key, **(v if isinstance(v, dict) else {"value": v})} for key, v in data.items()]
            if not isinstance(data, list):
                raise ValueError(f"{f}: expected a JSON array of rows, got {type(data).__name__}")
            self.origin += [(k, j) for j in range(len(data))]
            self.rows += data
        first = next((r for r in self.rows if isinstance(r, dict)), {})
        self.columns = list(first)

    def __len__(self) -> int:
        return len(self.rows)

    def iter_rows(self, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
        yield from self.rows

    def row(self, i: int):
        return self.rows[i]

    def where(self, i: int) -> str:
        k, j = self.origin[i]
        return f"{self.files[k]} row {j}"


class JsonlTable(Table):
    """JSON-lines files: one pass records each line's offset; a row is parsed when it is read."""

    def __init__(self, files: list[Path]):
        from array import array

        self.files = files
        self.offsets, self.file_of, self.lines = array("q"), array("i"), array("q")
        for k, f in enumerate(files):
            with open(f, "rb") as h:
                offset = 0
                for n, line in enumerate(h, 1):
                    if line.strip():
                        self.offsets.append(offset)
                        self.file_of.append(k)
                        self.lines.append(n)
                    offset += len(line)
        self.columns = list(self._parse(0)) if len(self.offsets) else []

    def __len__(self) -> int:
        return len(self.offsets)

    def _parse(self, i: int):
        handles = self.__dict__.setdefault("_handles", {})
        k = self.file_of[i]
        if handles.get("pid") != os.getpid():
            handles.clear()
            handles["pid"] = os.getpid()
        if k not in handles:
            handles[k] = open(self.files[k], "rb")
        h = handles[k]
        h.seek(self.offsets[i])
        raw = h.readline()
        try:
            return json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _BadLine(f"not a JSON line ({exc})")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_handles"}

    def iter_rows(self, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
        for i in range(len(self)):
            yield self._parse(i)

    def row(self, i: int):
        return self._parse(i)

    def where(self, i: int) -> str:
        return f"{self.files[self.file_of[i]]}:{self.lines[i]}"


class _BadLine(dict):
    """A JSONL line that does not parse: an empty row carrying why (readers count it as `bad_json`)."""

    def __init__(self, problem: str):
        super().__init__()
        self.problem = problem


TABLES = {".parquet": ParquetTable, ".arrow": ArrowTable, ".json": JsonTable, ".jsonl": JsonlTable}


def open_table(src: str | Path) -> Table:
    """The rows of a snapshot folder or a data file, by the files' suffix."""
    files = data_files(src)
    return TABLES[files[0].suffix](files)


def is_bad_line(row) -> str:
    """Why a row is not a row ("" when it is one)."""
    if isinstance(row, _BadLine):
        return row.problem
    return "" if isinstance(row, dict) else f"a row is {type(row).__name__}, not an object"
