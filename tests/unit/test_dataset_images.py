"""Image sizing (multiples of 64), image checks, and image synthesis with a tiny diffusers model."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.images import (
    ImageSizing,
    cover_crop,
    fit_to_multiple,
    image_name,
    load_image,
    png_bytes,
    snap_size,
)


@pytest.mark.parametrize(
    "size, expected",
    [
        ((100, 37), (64, 64)),  # under 64 -> 64
        ((130, 200), (128, 192)),  # floor to multiples
        ((1000, 3000), (320, 1024)),  # long side capped: 1000·1024/3000 = 341.3 -> 320
        ((4000, 4000), (1024, 1024)),
        ((64, 64), (64, 64)),
    ],
)
def test_snap_size_hand_values(size, expected):
    assert snap_size(*size) == expected


def test_snap_size_with_other_cap():
    assert snap_size(1000, 700, ImageSizing(max_side=512)) == (512, 320)  # 700·0.512 = 358.4


@pytest.mark.parametrize("size", [(1, 1), (65, 63), (333, 517), (2049, 1023), (97, 1500)])
def test_odd_sizes_come_out_divisible_by_64(size):
    out = fit_to_multiple(Image.new("RGB", size, (10, 20, 30)))
    assert out.size == snap_size(*size)
    assert out.size[0] % 64 == 0 and out.size[1] % 64 == 0


def test_cover_crop_keeps_the_centre():
    # Left and right 50 px red, centre 92 px blue: the centred 128-wide crop is blue in the middle.
    image = Image.new("RGB", (192, 64), (255, 0, 0))
    image.paste((0, 0, 255), (50, 0, 142, 64))
    out = cover_crop(image, 128, 64)
    assert out.size == (128, 64)
    assert out.getpixel((64, 32)) == (0, 0, 255)
    assert out.getpixel((0, 32)) == (255, 0, 0)  # 32 px cut on each side, red remains at edges


def test_load_image_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetRejected, match="unreadable image .*cat.jpg"):
        load_image(bad)
    with pytest.raises(DatasetRejected, match="image file not found: .*dog.png"):
        load_image(tmp_path / "dog.png")


def test_png_bytes_are_content_addressed():
    a = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    b = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    c = png_bytes(Image.new("RGB", (64, 64), (1, 2, 4)))
    assert a == b and image_name(a) == image_name(b) != image_name(c)
    assert Image.open(io.BytesIO(a)).size == (64, 64)


# ----------------------------------------------------------------------- tiny diffusers pipeline


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from services.dataset_prep.tiny_image import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


def test_diffusers_generator_draws_images_of_the_asked_size(tiny_sd):
    from services.dataset_prep.generators import (
        DiffusersImageConfig,
        DiffusersImageGenerator,
    )

    generator = DiffusersImageGenerator(DiffusersImageConfig(str(tiny_sd), num_inference_steps=2))
    first = generator.generate_image("a red fox", 128, 64, seed=1)
    again = generator.generate_image("a red fox", 128, 64, seed=1)
    other = generator.generate_image("a red fox", 128, 64, seed=2)
    assert first.size == (128, 64)
    assert png_bytes(first) == png_bytes(again)  # fixed seed -> same image
    assert png_bytes(first) != png_bytes(other)
    with pytest.raises(ValueError, match="divisible by 64"):
        generator.generate_image("x", 100, 64, seed=0)


def test_image_dataset_yields_synthetic_pairs(tmp_path, tiny_sd, tiny_llama):
    from services.dataset_prep.generators import (
        DiffusersImageConfig,
        DiffusersImageGenerator,
        LocalGeneratorConfig,
        LocalTransformersGenerator,
    )
    from services.dataset_prep.logic import SplitConfig
    from services.dataset_prep.pipeline import (
        DatasetSpec,
        GeneratorSet,
        PrepConfig,
        prepare_dataset,
    )
    from services.dataset_prep.schema import RejectionLimits, TaskKind
    from services.dataset_prep.synthesis import SynthesisConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = [
        (70, 130),
        (200, 90),
        (65, 65),
        (129, 300),
        (100, 100),
        (333, 257),
        (64, 64),
        (90, 70),
        (150, 150),
        (64, 200),
    ]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (25 * i, 255 - 25 * i, 7)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a flat colour number {i}")

    text = LocalTransformersGenerator(
        LocalGeneratorConfig(str(tiny_llama), max_new_tokens=12, fallback_max_new_tokens=6)
    )
    image = DiffusersImageGenerator(DiffusersImageConfig(str(tiny_sd), num_inference_steps=2))
    config = PrepConfig(
        split=SplitConfig(synth_cap=3),
        limits=RejectionLimits(min_rows=10),
        synthesis=SynthesisConfig(image_max_side=128),
    )
    stages = []
    prepared = prepare_dataset(
        DatasetSpec(str(folder), TaskKind.IMAGE),
        GeneratorSet(text=text, image=image),
        config,
        on_progress=lambda stage, done, total: stages.append(stage),
    )
    assert (prepared.train.num_rows, prepared.test.num_rows) == (9, 1)
    assert prepared.synth.num_rows == 3
    for split in (prepared.train, prepared.test, prepared.synth):
        assert set(split.images) == {r["image"] for r in split.rows}
        for row in split.rows:
            assert set(row) == {"image", "caption"} and row["caption"].strip()
            picture = Image.open(io.BytesIO(split.images[row["image"]]))
            assert picture.size[0] % 64 == 0 and picture.size[1] % 64 == 0
            assert max(picture.size) <= (128 if split is prepared.synth else 1024)
            assert image_name(split.images[row["image"]]) == row["image"]
    # Synthetic captions are new text, not copies of the source captions.
    source_captions = {f"a flat colour number {i}" for i in range(len(sizes))}
    assert not {r["caption"] for r in prepared.synth.rows} & source_captions
    assert {"load", "images", "split", "synthesise", "synthesise_images", "done"} <= set(stages)
