"""LAVIS's only use of cv2 gives opencv-python-headless 4.5.5's results with the installed opencv.

``import lavis`` imports cv2, but only ``lavis.processors.randaugment`` calls it (the BLIP-2
path's ``blip2_image_train`` is a crop and a flip). LAVIS 1.0.2 pins opencv-python-headless
4.5.5.64, built against numpy 1; the plugin lets pip take a current opencv beside numpy 2
(docs/install.md). Each cv2-using augmentation is run on a fixed image and compared with the
output recorded with opencv 4.5.5.64 and numpy 1 on Python 3.11 (the pinned stack) by

    python tests/test_opencv_compat.py --write-fixture

Equal up to one grey level on at most 1% of the values (interpolation rounding may move
between opencv releases); the recorded maximum difference is printed on failure.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "randaugment_opencv_4.5.5.json"

# name -> arguments (those cv2 is called with; see lavis/processors/randaugment.py)
CASES = {
    "AutoContrast": (),
    "Equalize": (),
    "Rotate": (30.0, (128, 128, 128)),
    "Sharpness": (1.7,),
    "ShearX": (0.3, (128, 128, 128)),
    "ShearY": (-0.3, (128, 128, 128)),
    "TranslateX": (5, (128, 128, 128)),
    "TranslateY": (-5, (128, 128, 128)),
}


def image():
    """24 x 20 RGB uint8 image with gradients, edges and noise (fixed)."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:24, 0:20]
    img = np.stack([x * 12, y * 10, (x * y) % 256], axis=-1).astype(np.int64)
    img[6:14, 4:12] = [200, 30, 90]
    img = img + rng.randint(-20, 21, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def outputs():
    from lavis.processors.randaugment import func_dict

    return {name: np.asarray(func_dict[name](image(), *args)) for name, args in CASES.items()}


def write_fixture():
    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("opencv-python-headless", "numpy")}
    if not versions["opencv-python-headless"].startswith("4.5.5"):
        sys.exit("write the fixture with opencv-python-headless 4.5.5 (the pinned stack)")
    data = {"made_with": dict(versions, python=sys.version.split()[0]),
            "outputs": {k: v.tolist() for k, v in outputs().items()}}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print("wrote", FIXTURE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_randaugment_matches_opencv_4_5_5(name):
    reference = json.loads(FIXTURE.read_text())
    want = np.asarray(reference["outputs"][name], dtype=np.int64)
    got = outputs()[name]
    assert got.dtype == np.uint8 and got.shape == want.shape == image().shape
    diff = np.abs(got.astype(np.int64) - want)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (
        "%s differs from opencv 4.5.5: max %d, %.2f%% of values" % (name, diff.max(), 100 * (diff > 0).mean()))


def test_augmentations_change_the_image():
    """Guards the comparison itself: each case really transforms the image."""
    for name, out in outputs().items():
        assert not np.array_equal(out, image()), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-fixture"]:
        sys.exit("usage: python tests/test_opencv_compat.py --write-fixture")
    write_fixture()
