"""The preference record: the one contract between builders and the trainer, plus SFT samples.

One JSON object per line, UTF-8 (a byte-order mark at the start is accepted). Records are validated on
read: bytes that are not UTF-8, unknown keys, missing fields, wrong types, numbers that are not finite,
missing media, a pair that prefers nothing and a repeated pair id are errors that name the file, the line
and the field. Training reads through `scan_records`: one streaming pass validates every line, and only
the byte offsets of the good lines are kept (`RecordFile` parses a record again when a batch needs it).

One module per job; this package offers their public names:
- `schema`: `PairRecord`, `SFTRecord`, `AugSpec`, ids and digests (`make_id`, `pair_id`, `file_digest`), `RecordError`;
- `validation`: one decoded line -> a record (`pair_from_json`, `sft_from_json`);
- `media_paths`: `resolve_media` (paths stay under the media root), `MediaCheck` (each distinct path checked once);
- `jsonl`: lines, decoding with file:line errors, the line index, `write_jsonl`;
- `record_file`: `RecordFile`, the lazy sequence training reads;
- `reading`: `scan_records` (streaming or background validation), `read_pairs` / `read_sft` (whole small files);
- `trl`: `to_trl_rows` / `to_trl_dataset` (TRL's vision-preference layout);
- `manifest`: `write_manifest`, `read_manifest`, `default_media_root`.
Sets in other layouts are `mmpo.formats`' job; it imports this package, never the reverse.
"""

from mmpo.records.jsonl import index_lines, iter_raw_lines, jsonl_lines, write_jsonl
from mmpo.records.manifest import MANIFEST_FILE, default_media_root, read_manifest, write_manifest
from mmpo.records.media_paths import MediaCheck, resolve_media
from mmpo.records.reading import is_own_jsonl, read_pairs, read_sft, scan_records, validate_in_background
from mmpo.records.record_file import RecordFile, id_hash
from mmpo.records.schema import AugSpec, PairRecord, RecordError, SFTRecord, file_digest, make_id, pair_id
from mmpo.records.trl import to_trl_dataset, to_trl_rows
from mmpo.records.validation import pair_from_json, sft_from_json

__all__ = [
    "MANIFEST_FILE", "AugSpec", "MediaCheck", "PairRecord", "RecordError", "RecordFile", "SFTRecord",
    "default_media_root", "file_digest", "id_hash", "index_lines", "is_own_jsonl", "iter_raw_lines",
    "jsonl_lines", "make_id", "pair_from_json", "pair_id", "read_manifest", "read_pairs", "read_sft", "resolve_media",
    "scan_records", "sft_from_json", "to_trl_dataset", "to_trl_rows", "validate_in_background", "write_jsonl", "write_manifest",
]
