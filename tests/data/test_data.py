"""Image decoding and labels CSV validation, including every bad input the tool must survive."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mhtag.core.errors import ImageError, MhtagError
from mhtag.data.images import load_image
from mhtag.data.labels import drop_unreadable, hash_split, read_labels
from mhtag.data.schema import MISSING, UNKNOWN, LabelSchema
from mhtag.data.transforms import Letterbox, build_transform, forbidden_augmentations


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def good_jpg(tmp_path):
    return _save(tmp_path / "good.jpg", Image.new("RGB", (40, 30), (200, 10, 10)))


def test_good_image_loads_as_rgb(good_jpg):
    img = load_image(good_jpg)
    assert img.mode == "RGB" and img.size == (40, 30)


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, not an image"), "not an image"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "file not found"),
])
def test_unusable_files_name_the_file_and_reason(tmp_path, make, reason):
    p = tmp_path / "x.jpg"
    make(p)
    with pytest.raises(ImageError, match=reason) as err:
        load_image(p)
    assert str(p) in str(err.value)


def test_truncated_and_corrupt_jpegs(tmp_path, good_jpg):
    data = good_jpg.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(data[:20] + b"\x00garbage" * 50)
    for name in ("trunc.jpg", "corrupt.jpg"):
        with pytest.raises(ImageError, match="corrupt or truncated|not an image"):
            load_image(tmp_path / name)


def test_decompression_bomb_is_refused(tmp_path):
    p = _save(tmp_path / "big.png", Image.new("1", (200, 200)))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(p, max_pixels=10_000)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = _save(tmp_path / "rot.jpg", img, exif=exif)
    assert load_image(p).size == (20, 60)


def test_cmyk_palette_alpha_and_16_bit(tmp_path):
    cmyk = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    assert load_image(cmyk).getpixel((4, 4))[0] > 200  # red stays red
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    assert load_image(_save(tmp_path / "a.png", rgba)).getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0] * 256)
    assert load_image(_save(tmp_path / "p.png", pal, transparency=0)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_save(tmp_path / "p2.png", pal)).getpixel((0, 0)) == (255, 0, 0)
    deep = Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16))
    out = load_image(_save(tmp_path / "deep.png", deep))
    assert out.mode == "RGB" and 120 <= out.getpixel((0, 0))[0] <= 135  # mid grey, not clipped white


def test_letterbox_keeps_the_whole_object():
    img = Image.new("RGB", (60, 80), (255, 0, 0))
    out = Letterbox((128, 128), (0, 0, 0))(img)
    arr = np.asarray(out)
    red_cols = np.where(arr[64, :, 0] > 200)[0]
    assert out.size == (128, 128) and arr[0, 64, 0] > 200  # full height kept
    assert len(red_cols) == 96  # width scaled by the same 1.6, pads either side
    same = Letterbox((160, 120), (0, 0, 0))(img)
    assert np.asarray(same)[:, :, 0].min() > 200  # 3:4 into 3:4: no pad at all


def test_forbidden_augmentations_follow_attribute_names_and_config():
    assert forbidden_augmentations(["baseColour", "gender"], {}) == {"hue", "saturation"}
    assert forbidden_augmentations(["view"], {}) == {"hflip"}
    assert forbidden_augmentations(["shape"], {"shape": ["hflip"]}) == {"hflip"}
    tf = build_transform({"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}, train=True,
                         forbid={"hflip", "hue"})
    names = [type(t).__name__ for t in tf.transforms]
    assert "RandomHorizontalFlip" not in names
    jitter = next(t for t in tf.transforms if type(t).__name__ == "ColorJitter")
    assert jitter.hue is None


def test_training_geometry_is_a_mild_shift_and_scale_without_rotation():
    tf = build_transform({"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}, train=True)
    affine = next(t for t in tf.transforms if type(t).__name__ == "RandomAffine")
    assert affine.degrees == [0.0, 0.0]
    assert affine.translate == pytest.approx((0.04, 0.04))
    assert affine.scale == pytest.approx((0.92, 1.04))


def test_an_images_augmentation_depends_on_seed_epoch_and_index_alone_and_leaves_trainings_stream(tmp_path):
    import torch

    from mhtag.data.datasets import AugmentedDataset

    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(files[-1])
    tf = build_transform({"input_size": [32, 24], "mean": [0.5] * 3, "std": [0.5] * 3}, train=True)

    def draw(seed, epoch, i):
        return AugmentedDataset(files, tf, seed=seed)[(epoch, i)][0]

    torch.manual_seed(123)
    draw(0, 0, 0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # dropout's stream in the training process is untouched
    assert torch.equal(draw(0, 3, 1), draw(0, 3, 1))
    assert not torch.equal(draw(0, 3, 1), draw(0, 4, 1))  # a new draw each epoch
    assert not torch.equal(draw(0, 3, 1), draw(1, 3, 1))  # and for each seed


def _csv(tmp_path, rows, header="path,colour,kind"):
    p = tmp_path / "labels.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def _images(tmp_path, n):
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / "img" / f"{i}.png")


def test_missing_path_column(tmp_path):
    with pytest.raises(MhtagError, match="no 'path' column.*file, colour"):
        read_labels(_csv(tmp_path, ["a.png,red"], header="file,colour"))


def test_bad_rows_are_skipped_with_row_and_reason(tmp_path):
    _images(tmp_path, 3)
    (tmp_path / "img" / "dir.png").mkdir()
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG broken")
    table = read_labels(_csv(tmp_path, [
        "img/0.png,red,a", "img/0.png,blue,b", "../../etc/passwd,red,a", "img/missing.png,red,a",
        "img/dir.png,red,a", "img/1.png,,b", "img/2.png,green,a", "img/bad.png,red,a"]))
    table = drop_unreadable(table)
    reasons = {s.row: s.reason for s in table.skipped}
    assert "duplicate path (first on row 2)" in reasons[3]
    assert "escapes the image root" in reasons[4]
    assert reasons[5] == "file not found" and reasons[6] == "is a directory"
    assert "not an image" in reasons[9] or "corrupt" in reasons[9]
    assert list(table.frame["path"]) == ["img/0.png", "img/1.png", "img/2.png"]


def test_schema_vocab_unknown_and_missing_labels(tmp_path):
    frame = pd.DataFrame({"colour": ["red", "red", "blue", None], "tags": ["a|b", "", "b", None]})
    schema, dropped = LabelSchema.fit(frame, ["colour", "tags"], {"tags"})
    assert schema["colour"].classes == ["blue", "red"] and schema["colour"].counts == [1, 2]
    assert schema["tags"].classes == ["a", "b"] and schema["tags"].counts == [1, 2]
    targets, unknown = schema.encode(pd.DataFrame({"colour": ["red", "pink", None], "tags": ["a|zz", "", "b"]}))
    assert targets["colour"].tolist() == [1, UNKNOWN, MISSING]
    assert targets["tags"].tolist() == [[1, 0], [0, 0], [0, 1]]
    assert unknown == {"colour": 1, "tags": 1}


def test_single_class_attribute_is_dropped_with_reason():
    frame = pd.DataFrame({"colour": ["red", "red"], "kind": ["a", "b"]})
    schema, dropped = LabelSchema.fit(frame, ["colour", "kind"], set())
    assert schema.names == ["kind"] and "only 1 class" in dropped["colour"]


def test_a_schema_with_classes_merged_into_other_still_encodes_them():
    """Models trained with the removed `min_count` folded rare classes into "other"; their schemas still load."""
    schema = LabelSchema.from_dict({"attributes": [{"name": "c", "kind": "single", "classes": ["a", "b", "other"],
                                                    "counts": [5, 5, 2], "merged": ["rare1", "rare2"]}]})
    targets, unknown = schema.encode(pd.DataFrame({"c": ["rare2", "new"]}))
    assert targets["c"].tolist() == [2, UNKNOWN]


def test_schema_version_changes_with_vocabulary():
    a, _ = LabelSchema.fit(pd.DataFrame({"c": ["x", "y"]}), ["c"], set())
    b, _ = LabelSchema.fit(pd.DataFrame({"c": ["x", "z"]}), ["c"], set())
    assert a.version != b.version
    assert LabelSchema.from_dict(a.to_dict()).version == a.version


def test_hash_split_is_deterministic_and_roughly_80_10_10():
    splits = [hash_split(f"img/{i}.jpg") for i in range(2000)]
    assert splits == [hash_split(f"img/{i}.jpg") for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85


def test_a_stopped_image_check_resumes_where_it_was(tmp_path, monkeypatch):
    """Verdicts are saved as the check goes, so a run stopped half-way decodes only the rest next time."""
    import mhtag.data.images as images

    paths = [str(_save(tmp_path / f"{i}.png", Image.new("RGB", (8, 8), (i, 0, 0)))) for i in range(6)]
    monkeypatch.setattr(images, "CHECK_CHUNK", 2)
    monkeypatch.setattr(images, "CHECK_SAVE_S", 0.0)
    decoded = []
    real = images.probe_image_files

    def stopped_on_the_third_chunk(ps, workers=4):
        if len(decoded) == 4:
            raise KeyboardInterrupt
        decoded.extend(ps)
        return real(ps, workers)

    monkeypatch.setattr(images, "probe_image_files", stopped_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        images.check_image_files(paths)
    monkeypatch.setattr(images, "probe_image_files", lambda ps, workers=4: decoded.extend(ps) or real(ps, workers))
    checks = images.check_image_files(paths)
    assert decoded == paths  # four before the stop, the last two after it: none twice
    assert [c.error for c in checks] == [None] * 6
    assert len({c.sha1 for c in checks}) == 6


def test_free_text_columns_are_not_heads(tmp_path):
    _images(tmp_path, 1)
    rows = [f"img/0.png,red,Product number {i}" for i in range(1)]
    rows += [f"img/x{i}.png,red,Product number {i}" for i in range(30)]
    table = read_labels(_csv(tmp_path, rows, header="path,colour,name"), check_files=False)
    assert table.text_columns == ["name"] and table.attributes == ["colour"]


def test_image_checks_are_kept_per_file_version(tmp_path, monkeypatch):
    """A second look at unchanged files decodes nothing; a file rewritten since is decoded again."""
    import os

    import mhtag.data.images as images

    paths = [str(_save(tmp_path / f"{i}.png", Image.new("RGB", (8, 8)))) for i in range(3)]
    assert images.image_errors(paths) == [None, None, None]
    decoded = []
    real = images.probe_image_files
    monkeypatch.setattr(images, "probe_image_files", lambda ps, workers=4: decoded.extend(ps) or real(ps, workers))
    assert images.image_errors(paths) == [None, None, None] and decoded == []
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    os.utime(paths[1], ns=(1, 1))
    errors = images.image_errors(paths)
    assert decoded == [paths[1]] and errors[0] is None and errors[2] is None and errors[1]
    checks = images.check_image_files(paths)
    assert checks[0].sha1 == hashlib.sha1(Path(paths[0]).read_bytes()).hexdigest() and checks[1].sha1 is None
