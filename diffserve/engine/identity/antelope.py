"""InsightFace antelopev2 for PuLID: find the largest face, embed it with ArcFace, align it. No torch.

Through insightface's own classes (its SCRFD decoder and ArcFace pre-processing), on onnxruntime:

* detection: SCRFD-10G with five landmarks (`scrfd_10g_bnkps.onnx`) on a `det_size` square letterbox,
  score threshold `det_thresh`; the largest box is the face, as PuLID-FLUX takes it;
* identity: the ArcFace model (`glintr100.onnx`) on the 112 px crop insightface aligns to its
  ArcFace template; the 512-d embedding is kept unnormalised, as PuLID feeds it to its IDFormer;
* alignment for the face parser and EVA-CLIP: the five landmarks are mapped to facexlib's FFHQ
  template for a 512 px face (least-median similarity fit, grey (132, 133, 135) border), the crop
  PuLID-FLUX takes from facexlib's FaceRestoreHelper. PuLID finds those landmarks with facexlib's
  RetinaFace-R50; here the SCRFD landmarks of the same face are used (the same five points: eyes,
  nose tip, mouth corners), so one detector serves both crops and both always show the same face.

The API process runs `FaceFinder` (detector only) at submit, so an image the worker would reject is
refused before anything is queued.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffserve.engine.identity.errors import NoFaceFound

# facexlib's five FFHQ landmarks of a 512 x 512 face: left eye, right eye, nose tip, mouth corners.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
ALIGN_BORDER_RGB = (132, 133, 135)  # facexlib's grey border, (135, 133, 132) in its BGR


@dataclass(frozen=True)
class Face:
    bbox: np.ndarray  # x1, y1, x2, y2 in image pixels
    kps: np.ndarray  # (5, 2) landmarks in image pixels
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))


def onnx_providers(device: str) -> list[str]:
    """CUDA when the worker runs on a GPU and onnxruntime has it (onnxruntime-gpu), else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _load(path: Path, task: str, providers: list[str], threads: int):
    import onnxruntime
    from insightface.model_zoo import get_model

    if not path.is_file():
        raise ValueError(f"{path}: file not found (the PuLID {task} model)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the process's share of the cores, like its torch threads
    try:
        model = get_model(str(path), providers=providers, sess_options=options)
    except Exception as exc:  # onnxruntime / protobuf errors for a file that is not an ONNX model
        raise ValueError(f"{path}: not a loadable ONNX model ({exc})") from exc
    if model is None or getattr(model, "taskname", None) != task:
        raise ValueError(f"{path}: not an InsightFace {task} model "
                         f"(found {getattr(model, 'taskname', 'an unknown model')})")
    return model


class FaceFinder:
    """SCRFD face detection (insightface), largest face first."""

    def __init__(self, detector: Path, *, det_size: int, det_thresh: float, providers: list[str],
                 threads: int = 1) -> None:
        self.model = _load(Path(detector), "detection", providers, threads)
        self.model.prepare(ctx_id=0, input_size=(det_size, det_size), det_thresh=det_thresh)

    def faces(self, rgb: np.ndarray) -> list[Face]:
        bboxes, kpss = self.model.detect(np.ascontiguousarray(rgb[..., ::-1]), max_num=0)
        if kpss is None:
            raise ValueError("the PuLID face detector gives no landmarks (antelopev2's scrfd_10g_bnkps does)")
        found = [Face(bbox=b[:4], kps=k, score=float(b[4])) for b, k in zip(bboxes, kpss)]
        return sorted(found, key=lambda f: f.area, reverse=True)

    def largest(self, rgb: np.ndarray, *, field_name: str = "image") -> Face:
        found = self.faces(rgb)
        if not found:
            raise NoFaceFound(f"{field_name}: no face found in image")
        return found[0]


class Antelope:
    """antelopev2's detector and ArcFace model, plus the 512 px FFHQ alignment."""

    def __init__(self, detector: Path, recognizer: Path, *, det_size: int, det_thresh: float,
                 providers: list[str], threads: int = 1) -> None:
        self.finder = FaceFinder(detector, det_size=det_size, det_thresh=det_thresh, providers=providers,
                                 threads=threads)
        self.arcface = _load(Path(recognizer), "recognition", providers, threads)
        self.arcface.prepare(ctx_id=0)

    def embedding(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """ArcFace's (512,) float32 embedding of `face`, unnormalised (insightface aligns the crop)."""
        from insightface.app.common import Face as InsightFace

        with warnings.catch_warnings():  # scikit-image 0.26 deprecates the estimate() insightface calls
            warnings.simplefilter("ignore", FutureWarning)
            bgr = np.ascontiguousarray(rgb[..., ::-1])
            embedding = self.arcface.get(bgr, InsightFace(bbox=face.bbox, kps=face.kps))
        return np.asarray(embedding, dtype=np.float32)


def align_face(rgb: np.ndarray, kps: np.ndarray, size: int = 512) -> np.ndarray:
    """The face warped onto facexlib's FFHQ template at `size` px (uint8 RGB)."""
    import cv2

    template = FFHQ_TEMPLATE_512 * (size / 512.0)
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(kps, np.float32), template, method=cv2.LMEDS)
    if matrix is None:
        raise NoFaceFound("image: the face's landmarks could not be aligned")
    return cv2.warpAffine(rgb, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=ALIGN_BORDER_RGB)
