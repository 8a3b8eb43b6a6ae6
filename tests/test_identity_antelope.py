"""antelopev2 for PuLID through insightface: SCRFD detection, ArcFace embedding, FFHQ alignment.

The two ONNX models are tiny stand-ins with the real interfaces (tests/onnx_faces.py): the detector
reports the faces it was built with, so the tests know where each face is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from diffserve.engine.identity.antelope import FFHQ_TEMPLATE_512, Antelope, FaceFinder, align_face
from diffserve.engine.identity.errors import NoFaceFound
from diffserve.engine.identity.faces import SubmitFaceCheck

from .onnx_faces import FakeFace, write_arcface, write_scrfd

CPU = ["CPUExecutionProvider"]
W, H = 160, 120  # not square: the detector letterboxes it


def face_at(x: float, y: float, side: float, score: float = 0.9) -> FakeFace:
    """A face box with its top-left at (x, y); landmarks where the FFHQ template has them."""
    kps = FFHQ_TEMPLATE_512 * (side / 512) + np.array([x, y], np.float32)
    return FakeFace(bbox=(x, y, x + side, y + side), kps=tuple(map(tuple, kps.tolist())), score=score)


def picture(faces: list[FakeFace], colours=((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255))):
    """A grey image with a coloured dot on each landmark of each face."""
    im = Image.new("RGB", (W, H), (90, 90, 90))
    d = ImageDraw.Draw(im)
    for face in faces:
        for (x, y), colour in zip(face.kps, colours):
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    return np.asarray(im)


@pytest.fixture
def models(tmp_path: Path):
    def make(faces: list[FakeFace], name: str = "scrfd.onnx") -> tuple[Path, Path]:
        write_scrfd(tmp_path / name, faces, image_size=(W, H))
        write_arcface(tmp_path / "glintr100.onnx")
        return tmp_path / name, tmp_path / "glintr100.onnx"
    return make


def test_faces_come_back_in_image_pixels_largest_first_and_weak_ones_are_dropped(models):
    small, large, weak = face_at(10, 10, 30), face_at(60, 20, 80), face_at(100, 5, 50, score=0.3)
    detector, _ = models([small, large, weak])
    found = FaceFinder(detector, det_size=640, det_thresh=0.5, providers=CPU).faces(picture([small, large]))
    assert len(found) == 2  # the 0.3 face is under det_thresh
    np.testing.assert_allclose(found[0].bbox, large.bbox, atol=0.01)
    np.testing.assert_allclose(found[0].kps, np.array(large.kps), atol=0.01)
    np.testing.assert_allclose(found[1].bbox, small.bbox, atol=0.01)
    assert found[0].score == pytest.approx(0.9)


def test_no_face_is_an_error_naming_the_field(models):
    detector, _ = models([])
    finder = FaceFinder(detector, det_size=640, det_thresh=0.5, providers=CPU)
    with pytest.raises(NoFaceFound, match="init_image: no face found in image"):
        finder.largest(picture([]), field_name="init_image")


def test_arcface_embeds_the_aligned_face_unnormalised(models):
    face = face_at(30, 0, 120)
    detector, recognizer = models([face])
    antelope = Antelope(detector, recognizer, det_size=640, det_thresh=0.5, providers=CPU)
    image = picture([face])
    found = antelope.finder.largest(image)
    first, again = antelope.embedding(image, found), antelope.embedding(image, found)
    assert first.shape == (512,) and first.dtype == np.float32
    assert np.array_equal(first, again) and abs(np.linalg.norm(first) - 1.0) > 0.01
    other = picture([face], colours=((0, 0, 255),) * 5)  # same landmarks, other face pixels
    assert not np.allclose(antelope.embedding(other, found), first)
    moved = found.__class__(bbox=found.bbox, kps=found.kps + 3.0, score=found.score)  # other alignment
    assert not np.allclose(antelope.embedding(image, moved), first)


def test_alignment_puts_the_landmarks_on_facexlibs_ffhq_template():
    face = face_at(30, 0, 120)
    aligned = align_face(picture([face]), np.array(face.kps, np.float32), 512)
    assert aligned.shape == (512, 512, 3) and aligned.dtype == np.uint8
    expected = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255))
    for (x, y), colour in zip(FFHQ_TEMPLATE_512, expected):  # each landmark's dot lands on its template point
        assert tuple(aligned[round(y), round(x)]) == colour
    corner = align_face(picture([face]), np.array(face.kps, np.float32) - 60, 512)[0, 0]  # off the image
    assert tuple(corner) == (132, 133, 135)  # facexlib's grey border


def test_files_that_are_not_the_right_models_are_refused(models, tmp_path: Path):
    detector, recognizer = models([face_at(10, 10, 40)])
    with pytest.raises(ValueError, match="not an InsightFace detection model"):
        FaceFinder(recognizer, det_size=640, det_thresh=0.5, providers=CPU)
    with pytest.raises(ValueError, match="not an InsightFace recognition model"):
        Antelope(detector, detector, det_size=640, det_thresh=0.5, providers=CPU)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        FaceFinder(junk, det_size=640, det_thresh=0.5, providers=CPU)
    with pytest.raises(ValueError, match="file not found"):
        FaceFinder(tmp_path / "missing.onnx", det_size=640, det_thresh=0.5, providers=CPU)


def test_the_submit_check_uses_the_models_detector_and_sees_it_change(tmp_path: Path):
    folder = tmp_path / "pulid"
    face = face_at(30, 0, 120)
    write_scrfd(folder / "antelopev2" / "scrfd_10g_bnkps.onnx", [face], image_size=(W, H))
    (folder / "config.json").write_text(json.dumps({"embedder": {"kind": "official"}}))
    check = SubmitFaceCheck()
    image = Image.fromarray(picture([face]))
    check.require_face(folder, image, field_name="init_image")  # found: no error
    write_scrfd(folder / "antelopev2" / "scrfd_10g_bnkps.onnx", [], image_size=(W, H))  # the operator swaps it
    path = folder / "antelopev2" / "scrfd_10g_bnkps.onnx"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(NoFaceFound, match="init_image"):
        check.require_face(folder, image, field_name="init_image")
