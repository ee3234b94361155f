"""Split artifacts: text = the canonical JSONL; images = a byte-for-byte reproducible tar."""

from __future__ import annotations

import hashlib

from PIL import Image

from gradients.splits import read_split_artifact, split_artifact
from services.dataset_prep.images import image_name, png_bytes
from services.dataset_prep.logic import rows_sha256
from services.dataset_prep.pipeline import PreparedSplit


def test_text_artifact_is_the_jsonl_and_hashes_to_the_split_hash():
    rows = [
        {"instruction": "hi", "input": "", "output": "hello"},
        {"instruction": "é", "input": "", "output": "2"},
    ]
    split = PreparedSplit("test", rows, rows_sha256(rows))
    data = split_artifact(split)
    assert hashlib.sha256(data).hexdigest() == split.sha256
    assert read_split_artifact(data) == (rows, {})


def image_split(order: list[int]) -> PreparedSplit:
    images = {}
    rows = []
    for i in order:
        data = png_bytes(Image.new("RGB", (64, 128), (i, 2 * i, 3)))
        images[image_name(data)] = data
        rows.append({"image": image_name(data), "caption": f"tile {i}"})
    return PreparedSplit("train", rows, rows_sha256(rows), images)


def test_image_artifact_round_trips_and_is_reproducible():
    split = image_split([1, 2, 3])
    data = split_artifact(split)
    assert split_artifact(image_split([1, 2, 3])) == data  # same split, same bytes
    rows, images = read_split_artifact(data)
    assert rows == split.rows and images == split.images
    # Images are stored in name order, so insertion order does not matter.
    reordered = image_split([1, 2, 3])
    reordered.images = dict(reversed(list(reordered.images.items())))
    assert split_artifact(reordered) == data
    assert split_artifact(image_split([1, 2, 4])) != data


def test_rows_holding_unicode_line_separators_survive_the_artifact():
    """json.dumps(ensure_ascii=False) leaves U+2028 / U+0085 raw; str.splitlines() would cut the
    line there (a generated synthetic row did, and evaluation failed with "Unterminated string")."""
    import json as _json

    from gradients.splits import read_split_artifact

    rows = [{"instruction": "a\u2028b", "output": "c\u0085d\x1ce"}, {"instruction": "plain", "output": "x"}]
    data = "".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    assert read_split_artifact(data) == (rows, {})
