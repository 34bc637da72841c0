"""YMIR index + annotations -> COCO, with every kind of bad input counted and reported."""

from __future__ import annotations

import json
import logging
import os

import pytest
from PIL import Image

from ray_app.data.coco import to_coco
from ray_app.data.index import check_unique_basenames, read_index
from ray_app.protocol.errors import ErrorCode, YmirError

NAMES = ["cat", "dog"]


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(100, 80), (64, 64), (50, 40)]):
        path = tmp_path / "assets" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (w, h)).save(path)
        paths.append(path)
    return paths


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ark_conversion_with_every_bad_line_kind(tmp_path, images, caplog):
    ann = tmp_path / "ann"
    a0 = write(ann / "img0.txt", "\n".join([
        "0, 10, 10, 50, 40",              # good
        "1,20,20,30,30, 0.9, 0",          # good, with quality and angle
        "x, 1, 2, 3, 4",                  # malformed: class
        "0, 1, 2",                        # malformed: too few fields
        "5, 1, 1, 10, 10",                # class out of range
        "0, 30, 30, 30, 50",              # no area
        "1, 90, 70, 120, 90",             # reaches outside: clipped to (90, 70, 100, 80)
        "0, 200, 200, 300, 300",          # entirely outside
        "",
    ]))
    a1 = write(ann / "img1.txt", "")      # empty: a negative sample
    index = write(tmp_path / "train-index.tsv",
                  f"{images[0]}\t{a0}\r\n\r\n{images[1]}\t{a1}\n{images[2]}\t{ann / 'missing.txt'}\n"
                  f"{tmp_path / 'nope.jpg'}\t{a1}\n")
    caplog.set_level(logging.WARNING)
    report = to_coco(read_index(index, "training", True), NAMES, "ark:raw", tmp_path / "out" / "train.json",
                     tmp_path / "out")
    coco = json.loads((tmp_path / "out" / "train.json").read_text())
    assert report.images == 3 and report.boxes == 3
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(100, 80), (64, 64), (50, 40)]
    assert coco["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    boxes = [(a["category_id"], a["bbox"]) for a in coco["annotations"]]
    assert boxes == [(0, [10.0, 10.0, 40.0, 30.0]), (1, [20.0, 20.0, 10.0, 10.0]), (1, [90.0, 70.0, 10.0, 10.0])]
    assert dict(report.issues.counts) == {"malformed_line": 2, "class_out_of_range": 1, "empty_box": 1,
                                          "clipped_box": 1, "outside_box": 1, "unreadable_image": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6  # one per kind, each with an example
    assert any("2 malformed annotation lines" in w and "img0.txt:3" in w for w in warnings)


def test_voc_conversion(tmp_path, images):
    xml = write(tmp_path / "ann" / "img0.xml", """<annotation><size><width>100</width><height>80</height></size>
      <object><name>dog</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax><ymax>36</ymax></bndbox></object>
      <object><name>horse</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax><ymax>36</ymax></bndbox></object>
      <object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>""")
    broken = write(tmp_path / "ann" / "img1.xml", "<annotation><object>")
    index = write(tmp_path / "idx.tsv", f"{images[0]}\t{xml}\n{images[1]}\t{broken}\n")
    report = to_coco(read_index(index, "training", True), NAMES, "voc:raw", tmp_path / "out" / "t.json", tmp_path / "out")
    coco = json.loads((tmp_path / "out" / "t.json").read_text())
    assert [(a["category_id"], a["bbox"]) for a in coco["annotations"]] == [(1, [5.0, 6.0, 20.0, 30.0])]
    assert dict(report.issues.counts) == {"class_out_of_range": 1, "malformed_line": 1, "unreadable_annotation": 1}
    assert report.images == 2


def test_no_readable_image_is_a_dataset_error(tmp_path):
    index = write(tmp_path / "idx.tsv", f"{tmp_path / 'a.jpg'}\t\n")
    with pytest.raises(YmirError) as error:
        to_coco(read_index(index, "training", True), NAMES, "ark:raw", tmp_path / "o.json", tmp_path)
    assert error.value.code == ErrorCode.DATASET


@pytest.mark.parametrize("content", [None, "", "\n \n"])
def test_missing_or_empty_index_is_300002(tmp_path, content):
    path = tmp_path / "idx.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(YmirError) as error:
        read_index(path, "candidate", False)
    assert error.value.code == ErrorCode.DATASET and str(path) in error.value.message


def test_duplicate_basenames_refused():
    check_unique_basenames(["/a/x.jpg", "/b/y.jpg", "/a/x.jpg"], "candidate")
    with pytest.raises(YmirError, match="x.jpg"):
        check_unique_basenames(["/a/x.jpg", "/b/x.jpg"], "candidate")


def test_truncated_images_are_skipped_trailing_data_is_not(tmp_path, images):
    """A file cut short reads its header but does not decode (the training loader would fail
    on it): skipped. Data after a complete image (a motion photo's video) is harmless: kept."""
    jpeg = tmp_path / "full.jpg"
    Image.effect_noise((64, 48), 50).convert("RGB").save(jpeg)
    png = images[0].read_bytes()
    files = {"cut.jpg": jpeg.read_bytes()[:-10], "cut.png": png[:-12],
             "tail.jpg": jpeg.read_bytes() + b"\0" * 5000, "tail.png": png + b"extra"}
    for name, data in files.items():
        write(tmp_path / "assets" / name, "").write_bytes(data)
    index = write(tmp_path / "idx.tsv", "".join(f"{tmp_path / 'assets' / name}\t\n" for name in files))
    report = to_coco(read_index(index, "training", True), NAMES, "ark:raw", tmp_path / "o.json", tmp_path)
    kept = [i["file_name"] for i in json.loads((tmp_path / "o.json").read_text())["images"]]
    assert [os.path.basename(k) for k in kept] == ["tail.jpg", "tail.png"]
    assert report.issues.counts == {"unreadable_image": 2}
    assert all("TruncatedImageError" in e for e in report.issues.examples["unreadable_image"])
