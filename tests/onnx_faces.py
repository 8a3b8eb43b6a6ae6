"""Tiny ONNX stand-ins for InsightFace antelopev2's two models, with the real models' interfaces.

* `write_scrfd`: SCRFD's nine outputs (scores, box distances and landmark distances for strides 8,
  16 and 32, two anchors per cell), as constants that report the faces it is built with: a
  detector whose answer the tests know. insightface decodes it exactly as it decodes
  scrfd_10g_bnkps.onnx.
* `write_arcface`: a small random conv net from a 112 x 112 face to a 512-d embedding, which
  insightface routes and pre-processes as an ArcFace model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
ANCHORS = 2


@dataclass
class FakeFace:
    """A face the SCRFD stand-in reports, in pixels of a `image_w` x `image_h` image."""

    bbox: tuple[float, float, float, float]
    kps: tuple[tuple[float, float], ...]  # left eye, right eye, nose, left mouth, right mouth
    score: float = 0.9


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_scrfd(path: Path, faces: list[FakeFace], *, image_size: tuple[int, int], det_size: int = 640) -> None:
    """SCRFD outputs that decode to `faces` for an image of `image_size` (w, h), letterboxed as insightface does."""
    w, h = image_size
    scale = det_size / max(w, h)  # insightface: the long side fills the square, padding bottom/right
    outputs = {}
    for stride in STRIDES:
        cells = (det_size // stride) ** 2 * ANCHORS
        outputs[stride] = [np.zeros((cells, 1), np.float32), np.zeros((cells, 4), np.float32),
                           np.zeros((cells, 10), np.float32)]
    for face in faces:
        stride = 32
        box = np.array(face.bbox, np.float32) * scale
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        gx, gy = int(cx // stride), int(cy // stride)
        row = (gy * (det_size // stride) + gx) * ANCHORS
        ax, ay = gx * stride, gy * stride
        scores, dist, kps = outputs[stride]
        scores[row, 0] = face.score
        dist[row] = np.array([ax - box[0], ay - box[1], box[2] - ax, box[3] - ay]) / stride
        points = np.array(face.kps, np.float32) * scale
        kps[row] = (points - np.array([ax, ay], np.float32)).reshape(-1) / stride
    names, nodes, infos = [], [], []
    for part, width in ((0, 1), (1, 4), (2, 10)):
        for stride in STRIDES:
            name = f"{('score', 'bbox', 'kps')[part]}_{stride}"
            value = outputs[stride][part]
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value)))
            infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [value.shape[0], width]))
            names.append(name)
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, det_size, det_size])
    _save(helper.make_graph(nodes, "scrfd_standin", [image], infos), Path(path))


def write_arcface(path: Path, *, seed: int = 0, dim: int = 512) -> None:
    """Conv(3→8, s2), ReLU, Conv(8→16, s2), ReLU, global pool, Gemm(16→dim); seeded random weights."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    w3 = (rng.standard_normal((dim, 16)) * 0.5).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(np.zeros(dim, np.float32), "b3")]
    conv = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input.1", "w1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["683"], name="fc", transB=1),
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])
    _save(helper.make_graph(nodes, "arcface_standin", [image], [out], initializer=inits), Path(path))
