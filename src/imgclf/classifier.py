"""The Python front door: ``imgclf.load(model)`` returns a :class:`Classifier`.

>>> import imgclf
>>> clf = imgclf.load("efficientnet_lite0")            # a zoo name, a package folder or a checkpoint
>>> clf.predict("cat.jpg", k=3)                         # one input -> its top-3
[Prediction(index=281, label='tabby', score=0.52), ...]
>>> clf.predict(["cat.jpg", pil_image, pixels])         # a list -> one top-k list per input

Every input goes through the same steps as ``imgclf predict`` and the server: encoded images
(file paths, bytes) through the one decode path (:func:`imgclf.images.decode`: EXIF orientation,
every mode to RGB, the pixel limit), then the model's own preprocessing spec. A PIL image goes through the same
conversion step of that path (:func:`imgclf.images.image_to_rgb`), so it gets exactly what a file gets.
A numpy array is taken as decoded pixels: ``(H, W, 3)`` uint8 RGB goes straight to the
preprocessing; grey ``(H, W)``/``(H, W, 1)`` (uint8 or uint16) and RGBA ``(H, W, 4)`` go through
the decode path's mode conversion first (grey to RGB, transparency onto white). Arrays in BGR
order (OpenCV) must be flipped first: ``pixels[..., ::-1]``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from PIL import Image

from imgclf.engine import Array, Engine, OutputKind, Prediction, top_k
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError, decode, image_to_rgb
from imgclf.pipeline import prepare, read_error
from imgclf.preprocess import PreprocessSpec, preprocess

if TYPE_CHECKING:
    from imgclf.resolve import Runtime

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image | npt.NDArray[Any]"


class ImageInputError(UserError, ValueError):
    """An in-memory input (array or PIL image) that is not an image the model can take."""


@dataclass(frozen=True)
class FileResult:
    """The answer for one file of :meth:`Classifier.predict_files`: its predictions or why it failed."""

    file: str
    predictions: list[Prediction] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.predictions is None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "predictions": [p.to_dict() for p in self.predictions]}


class Classifier:
    """A loaded image classifier: top-k predictions for files, bytes, PIL images or arrays."""

    def __init__(self, engine: Engine, *, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.engine = engine
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def version(self) -> str:
        return self.engine.version

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of the model's outputs."""
        return list(self.engine.labels)

    @property
    def spec(self) -> PreprocessSpec:
        """The preprocessing every input gets (input size, resize and crop, mean/std)."""
        return self.engine.spec

    @property
    def output_kind(self) -> OutputKind:
        return self.engine.output_kind

    def __repr__(self) -> str:
        return f"Classifier({self.name!r}, version={self.version!r}, {len(self.engine.labels)} classes)"

    @overload
    def predict(self, inputs: ImageInput, k: int = 5) -> list[Prediction]: ...

    @overload
    def predict(self, inputs: list[ImageInput] | tuple[ImageInput, ...], k: int = 5) -> list[list[Prediction]]: ...

    def predict(self, inputs: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
                k: int = 5) -> list[Prediction] | list[list[Prediction]]:
        """The ``k`` most likely classes, best first: for one input a list of :class:`Prediction`,
        for a list or tuple of inputs one such list per input, in order.

        A file that is missing raises ``FileNotFoundError``; data that is not a usable image raises
        an :class:`~imgclf.images.ImageDecodeError` (both name the input). ``k`` is capped at the
        number of classes.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        if isinstance(inputs, (list, tuple)):
            return [row for chunk in _chunks(list(inputs), self.batch_size) for row in self._top_k(chunk, k)]
        return self._top_k([inputs], k)[0]

    def probabilities(self, inputs: list[ImageInput] | tuple[ImageInput, ...]) -> Array:
        """``(N, K)`` class probabilities for N inputs (columns in the order of :attr:`labels`)."""
        rows = [self.engine.probabilities(self.prepare(chunk)) for chunk in _chunks(list(inputs), self.batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, len(self.engine.labels)), np.float32)

    def prepare(self, inputs: Sequence[ImageInput]) -> Array:
        """Inputs -> the ``(N, C, S, S)`` float32 batch the engine takes (decode, then the spec)."""
        return np.stack([model_input(x, self.spec) for x in inputs])

    def _top_k(self, inputs: list[ImageInput], k: int) -> list[list[Prediction]]:
        return top_k(self.engine.probabilities(self.prepare(inputs)), self.engine.labels, k)

    def predict_files(self, files: Sequence[str | os.PathLike[str]], *, k: int = 5, batch_size: int | None = None,
                      workers: int = 2, progress: bool | None = None) -> list[FileResult]:
        """One :class:`FileResult` per file, in order; a file that cannot be read or decoded gets its
        error instead of failing the others (what ``imgclf predict`` prints).

        Files are decoded on ``workers`` threads (PIL releases the GIL) while the engine runs the
        previous batch. ``progress``: a bar on stderr (default: when stderr is a terminal and there
        is more than one batch).
        """
        from tqdm import tqdm

        if k < 1:
            raise ValueError("k must be at least 1")
        size = batch_size or self.batch_size
        paths = [Path(f) for f in files]
        if progress is None:
            progress = sys.stderr.isatty() and len(paths) > size
        results: list[FileResult] = []
        chunks = list(_chunks(paths, size))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
                tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr) as bar:
            pending = pool.map(self._load_file, chunks[0]) if chunks else iter(())
            for i, chunk in enumerate(chunks):
                loaded = list(pending)
                if i + 1 < len(chunks):  # decode the next batch while this one runs
                    pending = pool.map(self._load_file, chunks[i + 1])
                good = [x for x in loaded if not isinstance(x, str)]
                rows = iter(top_k(self.engine.probabilities(np.stack(good)), self.engine.labels, k) if good else [])
                for path, x in zip(chunk, loaded, strict=True):
                    if isinstance(x, str):
                        results.append(FileResult(str(path), error=x))
                    else:
                        results.append(FileResult(str(path), predictions=next(rows)))
                bar.update(len(chunk))
        return results

    def _load_file(self, path: Path) -> Array | str:
        """The file's model input, or why it cannot be used (a short message for the user)."""
        try:
            return prepare(path.read_bytes(), self.spec)
        except OSError as exc:
            return read_error(exc)
        except ImageDecodeError as exc:
            return str(exc)


def load(name_or_package: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None,
         engine: Runtime = "default", precision: str | None = None, threads: int | None = None,
         batch_size: int = 16) -> Classifier:
    """Load a classifier: a zoo name (see ``imgclf models``), a model package folder or a training
    checkpoint, exactly as ``imgclf predict --model`` takes it.

    ``weights``: a local weights file for a zoo model. ``engine``: ``"default"`` runs a package on
    ONNX Runtime (torch is not imported) and a zoo name or checkpoint in torch; ``"onnxruntime"``
    or ``"openvino"`` (the ``openvino`` extra) run a package on that engine, exporting a zoo model
    once into the package cache; ``"auto"`` picks the fastest engine and precision that passed its
    accuracy gate; ``"torch"`` insists on torch. ``precision``: ``"fp32"``, ``"bf16"``, ``"int8"``
    (the package's int8 variant from ``imgclf quantize``) or ``"auto"`` (default: ``"auto"`` with
    ``engine="auto"``, else fp32); see docs/engines.md. ``threads``: the engine's intra-op threads
    (default: the CPUs this process may use).
    """
    from imgclf import resolve

    model = os.fspath(name_or_package)
    weights_arg = os.fspath(weights) if weights is not None else None
    return Classifier(resolve.load_engine(model, weights=weights_arg, threads=threads, runtime=engine,
                                          precision=precision),
                      batch_size=batch_size)


def model_input(x: ImageInput, spec: PreprocessSpec) -> Array:
    """One input -> the model's ``(C, S, S)`` input. Encoded inputs (paths, bytes) take the server's
    path (:func:`imgclf.pipeline.prepare`: a large JPEG is decoded at reduced scale), so they get the
    server's answers; PIL images and arrays are full-size pixels already."""
    if isinstance(x, (str, os.PathLike)):
        return prepare(Path(x).read_bytes(), spec)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return prepare(bytes(x), spec)
    return preprocess(to_pixels(x), spec)


def to_pixels(x: ImageInput) -> npt.NDArray[np.uint8]:
    """One input -> ``(H, W, 3)`` RGB uint8 pixels, through the one decode path where it is encoded."""
    if isinstance(x, (str, os.PathLike)):
        return decode(Path(x).read_bytes())
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode(bytes(x))
    if isinstance(x, Image.Image):
        return image_to_rgb(x)
    if isinstance(x, np.ndarray):
        return _array_pixels(x)
    raise TypeError(f"cannot classify a {type(x).__name__}: pass a file path, image bytes, a PIL image "
                    "or a numpy array")


def _array_pixels(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if a.ndim == 4:
        raise ImageInputError(f"a 4-D array {a.shape} is a batch: pass list(batch) to predict one per image")
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ImageInputError(f"the array {a.shape} holds no pixels")
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    grey = a.ndim == 2 and a.dtype in (np.uint8, np.uint16)
    rgba = a.ndim == 3 and a.shape[2] == 4 and a.dtype == np.uint8
    if not (grey or rgba):
        raise ImageInputError(
            f"an array of shape {a.shape} and dtype {a.dtype} is not an image: pass (H, W, 3) RGB or "
            "(H, W, 4) RGBA uint8 pixels (0-255), or (H, W) grey uint8/uint16"
            + ("; for floats in 0-255 use a.astype(np.uint8)" if a.dtype.kind == "f" else ""))
    if 0 in a.shape:
        raise ImageInputError(f"the array {a.shape} holds no pixels")
    return image_to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])
