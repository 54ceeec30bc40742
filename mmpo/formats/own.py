"""mmpo's own pair / SFT JSONL through the format registry (what `convert --from mmpo` copies and re-checks)."""

from __future__ import annotations

from mmpo.formats.base import Format, has
from mmpo.formats.mapping import Unmappable
from mmpo.records import RecordError, pair_from_json


def read_own(row: dict, sink, options: dict) -> dict:
    try:
        rec = pair_from_json(row, "row")
    except RecordError as exc:
        raise Unmappable("invalid_record", str(exc).removeprefix("row: ")) from None
    fields = rec.to_json()
    fields["media"] = [sink.put(m) for m in rec.media]
    if rec.rejected_media is not None:
        fields["rejected_media"] = [sink.put(m) for m in rec.rejected_media]
    return fields


FORMATS = [Format("mmpo", "pair", read_own,
                  lambda c, r: has(c, "media", "media_type", "prompt", "chosen", "rejected"),
                  doc="mmpo's own pair JSONL (media read in place)")]
