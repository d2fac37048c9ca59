"""dlib's serialisation of a trained DNN, read without dlib.

dlib writes a network layer by layer from the input up (``dlib/dnn/core.h``: every
``add_layer`` serialises its subnetwork before its own details), each layer's details starting
with its version string (``con_4``, ``affine_``, ``fc_2``, ...; ``dlib/dnn/layers.h``). Its
primitives (``dlib/serialize.h``): an integer is a control byte (length in the low four bits,
0x80 for negative) and that many little-endian bytes; a bool is the character ``'1'`` or
``'0'``; a float is a mantissa and an exponent, two such integers; a string its length and
bytes; a tensor (``dlib/cuda/tensor.h``) version 2, four dimensions and raw little-endian
float32s; an alias tensor a view's shape into its layer's ``params`` (version 1 and four
dimensions).

``read_network`` parses a whole file and checks that every byte was read: a truncated or
foreign file is an error, not a half-loaded model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TENSOR_VERSION = 2


class DlibFormatError(ValueError):
    """A file that is not the dlib network it was expected to be."""


@dataclass
class Layer:
    """One layer's details: its version string, its fields and its parameters."""

    kind: str  # the version string without its number: con, affine, relu, fc, ...
    version: str
    fields: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None  # float32, flat, as dlib keeps them


class Reader:
    """dlib's serialisation primitives over the bytes of one file."""

    def __init__(self, data: bytes, name: str = "file") -> None:
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos}: not the dlib model "
                               "expected (truncated or another file?)")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"{n} more bytes expected")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def bool(self) -> bool:
        char = self.take(1)
        if char not in (b"0", b"1"):
            raise self.fail(f"bad bool {char!r}")
        return char == b"1"

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self, limit: int = 256) -> str:
        size = self.int()
        if not 0 <= size <= limit:
            raise self.fail(f"string of {size} bytes")
        try:
            return self.take(size).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII string") from None

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != TENSOR_VERSION:
            raise self.fail(f"tensor version {version}")
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"tensor shape {shape}")
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias tensor version {version}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def expect(self, what: str, got: Any, wanted: Any) -> None:
        if got != wanted:
            raise self.fail(f"{what} {got!r}, expected {wanted!r}")

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _con(r: Reader, layer: Layer) -> None:
    layer.params = r.tensor().reshape(-1)
    layer.fields.update(num_filters=r.int(), nr=r.int(), nc=r.int(), stride_y=r.int(),
                        stride_x=r.int(), padding_y=r.int(), padding_x=r.int(),
                        filters=r.alias(), biases=r.alias())
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        layer.fields[name] = r.float()
    if layer.version in ("con_5", "con_6"):
        layer.fields["use_bias"] = r.bool()
    if layer.version == "con_6":
        layer.fields["use_relu"] = r.bool()


def _affine(r: Reader, layer: Layer) -> None:
    layer.params = r.tensor().reshape(-1)
    layer.fields.update(gamma=r.alias(), beta=r.alias(), mode=r.int())
    if layer.version == "affine_2":
        layer.fields["disabled"] = r.bool()


def _pool(r: Reader, layer: Layer) -> None:
    layer.fields.update(nr=r.int(), nc=r.int(), stride_y=r.int(), stride_x=r.int(),
                        padding_y=r.int(), padding_x=r.int())


def _fc(r: Reader, layer: Layer) -> None:
    layer.fields.update(num_outputs=r.int(), num_inputs=r.int())
    layer.params = r.tensor().reshape(-1)
    layer.fields.update(weights=r.alias(), biases=r.alias(), bias_mode=r.int())
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        layer.fields[name] = r.float()
    if layer.version == "fc_3":
        layer.fields["use_bias"] = r.bool()


def _relu(r: Reader, layer: Layer) -> None:
    if layer.version == "relu_2":
        layer.fields["disabled"] = r.bool()


#: version string → (kind, reader of the fields after it)
LAYERS = {
    "con_4": ("con", _con), "con_5": ("con", _con), "con_6": ("con", _con),
    "affine_": ("affine", _affine), "affine_2": ("affine", _affine),
    "max_pool_2": ("max_pool", _pool), "avg_pool_2": ("avg_pool", _pool),
    "fc_2": ("fc", _fc), "fc_3": ("fc", _fc),
    "relu_": ("relu", _relu), "relu_2": ("relu", _relu),
    "add_prev_": ("add_prev", lambda r, layer: None),
}


def _loss_metric(r: Reader) -> dict[str, float]:
    r.expect("network version", r.int(), 1)  # add_loss_layer
    version = r.string()
    r.expect("loss", version, "loss_metric_2")
    return {"margin": r.float(), "distance_threshold": r.float()}


def _input_rgb_image_sized(r: Reader) -> dict[str, Any]:
    name = r.string()
    r.expect("input layer", name, "input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    return {"mean_rgb": mean, "rows": r.int(), "columns": r.int()}


def _layer_trailer(r: Reader, first: bool) -> None:
    """What ``add_layer`` writes after a layer's details: three flags and three work tensors
    (the first layer, over the input, also its sample expansion factor from version 3)."""
    r.bool(), r.bool(), r.bool()
    for _ in range(3):
        r.tensor()
    if first:
        r.int()


@dataclass
class Network:
    """A dlib metric-learning network as its file holds it."""

    loss: dict[str, float]
    input: dict[str, Any]
    layers: list[Layer]  # from the input up


def read_network(path: Path) -> Network:
    """Parse a ``loss_metric`` network over ``input_rgb_image_sized`` (dlib's face
    recognition models) from ``path``, every byte of it."""
    r = Reader(Path(path).read_bytes(), Path(path).name)
    loss = _loss_metric(r)
    # the nested layers' versions (add_layer 2, tags and skips 1), outermost first, down to the
    # the first layer over the input (add_layer 2 or 3)
    first_version = None
    # first layer over the input (add_layer 2 or 3); the input layer's name, a string of 21
    # bytes (control byte 1, then 21), ends them
    while r.data[r.pos:r.pos + 2] in (b"\x01\x01", b"\x01\x02", b"\x01\x03"):
        first_version = r.int()
    r.expect("first layer version", first_version in (2, 3), True)
    source = _input_rgb_image_sized(r)
    layers: list[Layer] = []
    while not r.done:
        version = r.string()
        if version not in LAYERS:
            raise r.fail(f"unknown layer {version!r}")
        kind, read_fields = LAYERS[version]
        layer = Layer(kind, version)
        read_fields(r, layer)
        _layer_trailer(r, first=not layers and first_version == 3)
        layers.append(layer)
    return Network(loss, source, layers)

