"""Layout.file_kind: each layout says what kind each of its files is (what --scale does to it)."""

import pytest

from poisongen.datasets import LAYOUTS
from poisongen.datasets.base import COPY, IMAGE, LABEL, POLYGONS, VOC_XML
from poisongen.errors import DatasetError

CASES = {
    "cityscapes": [("leftImg8bit/train/a/x_leftImg8bit.png", IMAGE), ("gtFine/train/a/x_gtFine_labelIds.png", LABEL),
                   ("gtFine/train/a/x_gtFine_polygons.json", POLYGONS), ("README", COPY),
                   ("rightImg8bit/val/b/y.jpg", IMAGE), ("gtCoarse/x.png", LABEL)],
    "voc": [("JPEGImages/x.jpg", IMAGE), ("SegmentationClass/x.png", LABEL), ("SegmentationClassAug/x.png", LABEL),
            ("SegmentationObject/x.png", LABEL), ("Annotations/x.xml", VOC_XML),
            ("ImageSets/Segmentation/train.txt", COPY)],
    "ade20k": [("images/training/x.jpg", IMAGE), ("annotations/training/x.png", LABEL), ("objectInfo150.txt", COPY)],
    "folder": [("images/train/x.png", IMAGE), ("masks/train/x.png", LABEL), ("dataset.yaml", COPY)],
}


@pytest.mark.parametrize("layout", sorted(CASES))
def test_each_layout_knows_its_files(layout):
    cls = LAYOUTS[layout]
    for path, kind in CASES[layout]:
        assert cls.file_kind(path) == kind, path


@pytest.mark.parametrize("layout,path", [("cityscapes", "extra/x.png"), ("voc", "SegmentationClass/x.jpg"),
                                         ("ade20k", "other/x.png"), ("folder", "thumbs/x.webp")])
def test_an_image_no_layout_rule_knows_is_refused(layout, path):
    with pytest.raises(DatasetError, match=f"--scale cannot tell what {path} is \\(a {layout} dataset rescales"):
        LAYOUTS[layout].file_kind(path)


def test_rescale_holds_no_per_layout_table():
    import poisongen.rescale as rescale

    assert not hasattr(rescale, "RULES") and not hasattr(rescale, "file_kind") and not hasattr(rescale, "KNOWN")
