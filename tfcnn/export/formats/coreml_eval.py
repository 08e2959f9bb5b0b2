"""An independent numpy evaluator of the ML Program inside a CoreML .mlpackage.

coremltools predicts only on macOS, so on Linux nothing would ever run the program the
converter wrote. This module reads that program the way CoreML does and computes it in numpy:
``Data/com.apple.CoreML/model.mlmodel`` (the Model protobuf, parsed with coremltools' own
schema classes) and ``weights/weight.bin`` (the blob file, parsed here with ``struct`` so a
corrupted file is one clear error). It runs the ``main`` function op by op:

* float16 programs are emulated in float16: every op computes in float32 from float16 inputs
  and its output is rounded to the dtype the program declares for it (so each op's result is
  float16, as on the device, up to the accumulation order inside an op);
* the image input is what CoreML hands the program: pixel values as float32 in planar
  [1, 3, H, W] order (RGB, or reversed for BGR); the ImageType's scale/bias are ops that
  coremltools writes into the program (``image__scaled__`` / ``image__biased__``) and run here
  like any other op;
* ``classify`` returns the class label and the label -> probability dictionary, as CoreML does;
* every op's result is checked against the shape the program declares for it, and any op
  outside the covered set raises naming the op: the evaluator never skips what it does not know.

It proves the converted program computes what Keras does in the stated precision; it cannot
show the Neural Engine's or GPU's own kernels and rounding.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import ExportError
from tfcnn.export.formats.coreml_ops import OPS, Ctx, NoBatch, Var

NAME = "tfcnn numpy MIL evaluator"
MODEL_FILE = "Data/com.apple.CoreML/model.mlmodel"
WEIGHT_PREFIX = "@model_path/"
BLOB_SENTINEL = 0xDEADBEEF
BLOB_HEADER = 64  # file header: uint32 count, uint32 version, then padding
BLOB_RECORD = 64  # per blob: uint32 sentinel, uint32 dtype, uint64 size, uint64 offset, padding
# MIL blob storage dtype codes (checked against coremltools' own BlobWriter in the tests).
BLOB_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f2"),
    2: np.dtype("<f4"),
    3: np.dtype("u1"),
    4: np.dtype("i1"),
    6: np.dtype("<i2"),
    7: np.dtype("<u2"),
    14: np.dtype("<i4"),
    15: np.dtype("<u4"),
}
# MIL_pb2.DataType names -> numpy dtypes the evaluator holds tensors in.
TENSOR_DTYPES: dict[str, np.dtype] = {
    "FLOAT16": np.dtype(np.float16),
    "FLOAT32": np.dtype(np.float32),
    "FLOAT64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "INT16": np.dtype(np.int16),
    "UINT16": np.dtype(np.uint16),
    "INT32": np.dtype(np.int32),
    "UINT32": np.dtype(np.uint32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}
def blas_threads(n: int) -> contextlib.AbstractContextManager:
    """Pin numpy's BLAS pool to ``n`` threads while evaluating (verify runs every format at fixed
    threads; an unpinned OpenBLAS on a busy machine is also ~15x slower at batch 1). threadpoolctl
    ships with scikit-learn; without it the pool is left as it is."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=max(int(n), 1), user_api="blas")


def _pb():
    from tfcnn.export.coreml import _ct

    ct = _ct()  # quiets coremltools' import-time warnings before its protobuf modules load
    return ct.proto.Model_pb2, ct.proto.MIL_pb2


# --------------------------------------------------------------------------- weight.bin


class WeightFile:
    """``weights/weight.bin``: blobs addressed by the offset of their 64-byte metadata record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except OSError as exc:
            raise ExportError(f"{self.path}: cannot read the CoreML weight file ({exc.strerror or exc}); re-export") from None
        if len(self.data) < BLOB_HEADER:
            raise ExportError(f"{self.path}: {len(self.data)} bytes is shorter than the 64-byte blob file header; re-export")
        _count, version = struct.unpack_from("<II", self.data, 0)
        if version != 2:
            raise ExportError(f"{self.path}: blob file version {version}, expected 2; the file is corrupted or from an unknown coremltools")

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        """The blob whose record starts at ``offset``, checked for sentinel, dtype and bounds."""
        where = f"{self.path} (blob at offset {offset} for {what})"
        if offset < BLOB_HEADER or offset + BLOB_RECORD > len(self.data):
            raise ExportError(f"{where}: the metadata record lies outside the {len(self.data)}-byte file; the package is corrupted, re-export")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", self.data, offset)
        if sentinel != BLOB_SENTINEL:
            raise ExportError(f"{where}: sentinel 0x{sentinel:08X} is not 0xDEADBEEF; the weight file is corrupted, re-export")
        stored = BLOB_DTYPES.get(code)
        if stored is None:
            raise ExportError(f"{where}: blob dtype code {code} is not one the evaluator reads ({sorted(BLOB_DTYPES)})")
        if stored.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
            raise ExportError(f"{where}: blob holds {stored} but the program declares {np.dtype(dtype)}; the package is inconsistent")
        want = int(np.prod(shape, dtype=np.int64)) * stored.itemsize
        if size != want:
            raise ExportError(f"{where}: blob holds {size} bytes, the declared shape {list(shape)} needs {want}; the package is corrupted")
        if data_offset < BLOB_HEADER or data_offset + size > len(self.data):
            raise ExportError(f"{where}: data [{data_offset}, {data_offset + size}) lies outside the {len(self.data)}-byte file; re-export")
        return np.frombuffer(self.data, stored, count=size // stored.itemsize, offset=data_offset).reshape(shape).astype(stored.newbyteorder("="))


# --------------------------------------------------------------------------- the program


def _tensor_dtype(MIL_pb2: Any, vt: Any) -> tuple[np.dtype | None, list[int | None]]:
    """(numpy dtype, dims with None for non-constant ones) of a ValueType, or (None, []) if not a tensor."""
    if vt.WhichOneof("type") != "tensorType":
        return None, []
    tt = vt.tensorType
    name = MIL_pb2.DataType.Name(tt.dataType)
    dims = [int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in tt.dimensions]
    return TENSOR_DTYPES.get(name), dims


def read_model(package: Path) -> Any:
    """The package's Model protobuf (coremltools' schema); a missing or garbled file is one error."""
    Model_pb2, _ = _pb()
    model_path = Path(package) / MODEL_FILE
    if not model_path.is_file():
        raise ExportError(f"{model_path} is missing; is {package} a CoreML .mlpackage?")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise ExportError(f"{model_path}: not a CoreML Model protobuf ({type(exc).__name__}: {exc}); re-export") from None
    return spec


class MILProgram:
    """The ``main`` function of a package's ML Program: its constants read once, run on any feeds.

    Everything is checked while reading (op types known, blobs inside the weight file, inputs
    typed), so a package the evaluator cannot run fails before the first image, naming why.
    """

    def __init__(self, package: Path, spec: Any = None):
        self.package = Path(package)
        _, MIL_pb2 = _pb()
        self._mil = MIL_pb2
        model_path = self.package / MODEL_FILE
        spec = spec if spec is not None else read_model(self.package)
        kind = spec.WhichOneof("Type")
        if kind != "mlProgram":
            raise ExportError(f"{model_path}: model type is {kind}, the evaluator runs only ML Programs (mlProgram)")
        self.spec = spec
        fns = spec.mlProgram.functions
        if "main" not in fns:
            raise ExportError(f"{model_path}: the ML Program has no 'main' function (has {sorted(fns)})")
        fn = fns["main"]
        if fn.opset not in fn.block_specializations:
            raise ExportError(f"{model_path}: main has no block for its opset {fn.opset!r}")
        self.opset = fn.opset
        self.block = fn.block_specializations[fn.opset]
        self._weights: dict[str, WeightFile] = {}
        self._read_inputs(fn)
        unknown = sorted({op.type for op in self.block.operations} - set(OPS) - {"const"})
        if unknown:
            raise ExportError(
                f"{model_path}: the program uses op(s) {', '.join(unknown)} that the numpy MIL evaluator does not "
                "implement; add them to tfcnn/export/formats/coreml_ops.py (it never skips an op)"
            )
        self.consts: dict[str, Var] = {}
        for op in self.block.operations:
            if op.type == "const":
                out = op.outputs[0]
                self.consts[out.name] = Var(self._value(op.attributes["val"], f"const {out.name!r}"))
        self.labels = self._labels()
        self.float16 = any(
            _tensor_dtype(MIL_pb2, o.type)[0] == np.float16 for op in self.block.operations for o in op.outputs
        )

    # ----------------------------------------------------------------- reading

    def _read_inputs(self, fn: Any) -> None:
        """The function's inputs: name -> (dtype, declared dims), checked before any op runs."""
        self.inputs: dict[str, tuple[np.dtype, list[int | None]]] = {}
        for i in fn.inputs:
            dt, dims = _tensor_dtype(self._mil, i.type)
            if dt is None:
                raise ExportError(f"{self.package}: main's input {i.name!r} is not a tensor")
            self.inputs[i.name] = (dt, dims)

    def _weight_file(self, name: str) -> WeightFile:
        if not name.startswith(WEIGHT_PREFIX):
            raise ExportError(f"{self.package}: weight file {name!r} is not inside the package ({WEIGHT_PREFIX}...)")
        rel = Path(name[len(WEIGHT_PREFIX):])
        if rel.is_absolute() or ".." in rel.parts:
            raise ExportError(f"{self.package}: weight file {name!r} points outside the package")
        if name not in self._weights:
            self._weights[name] = WeightFile(self.package / "Data" / "com.apple.CoreML" / rel)
        return self._weights[name]

    def _value(self, v: Any, what: str) -> Any:
        """A MIL Value (immediate or blob) as numpy / str / list."""
        kind = v.WhichOneof("value")
        dt, dims = _tensor_dtype(self._mil, v.type)
        if kind == "blobFileValue":
            if dt is None or None in dims:
                raise ExportError(f"{self.package}: {what} is a blob without a fixed tensor type")
            return self._weight_file(v.blobFileValue.fileName).read(int(v.blobFileValue.offset), dt, tuple(dims), what)
        if kind != "immediateValue":
            raise ExportError(f"{self.package}: {what} has a {kind} value the evaluator cannot read")
        iv = v.immediateValue
        ik = iv.WhichOneof("value")
        if ik == "list":
            return [self._value(x, what) for x in iv.list.values]
        if ik != "tensor":
            raise ExportError(f"{self.package}: {what} is an immediate {ik}, not a tensor")
        t = iv.tensor
        tk = t.WhichOneof("value")
        if v.type.tensorType.dataType == self._mil.DataType.Value("STRING"):
            vals = list(t.strings.values)
            return vals[0] if not dims else np.asarray(vals, dtype=object).reshape(dims)
        if dt is None or None in dims:
            raise ExportError(f"{self.package}: {what} has an unsupported tensor type")
        count = int(np.prod(dims, dtype=np.int64))
        if tk == "bytes":
            raw = t.bytes.values
            if len(raw) != count * dt.itemsize:
                raise ExportError(f"{self.package}: {what} holds {len(raw)} bytes, its type {dt} {dims} needs {count * dt.itemsize}")
            arr = np.frombuffer(raw, dt.newbyteorder("<")).astype(dt)
        else:
            vals = list(getattr(t, tk).values) if tk else []
            if len(vals) != count:
                raise ExportError(f"{self.package}: {what} has {len(vals)} values, its type {dt} {dims} needs {count}")
            arr = np.asarray(vals).astype(dt)
        return arr.reshape(dims) if dims else arr.reshape(())

    def _labels(self) -> list[str]:
        for op in self.block.operations:
            if op.type == "classify":
                args = op.inputs["classes"].arguments
                if len(args) != 1:
                    break
                arg = args[0]
                v = self.consts[arg.name].value if arg.name else self._value(arg.value, "classify classes")
                return [str(np.asarray(x).reshape(-1)[0]) if not isinstance(x, str) else x for x in v]
        return []

    def op_types(self) -> list[str]:
        return [op.type for op in self.block.operations]

    # ----------------------------------------------------------------- running

    def _inputs(self, op: Any, env: dict[str, Var]) -> dict[str, Var]:
        out: dict[str, Var] = {}
        for key, arg in op.inputs.items():
            vs = []
            for b in arg.arguments:
                if b.name:
                    if b.name not in env:
                        raise ExportError(f"{self.package}: op {op.type} reads {b.name!r} before it is defined")
                    vs.append(env[b.name])
                else:
                    vs.append(Var(self._value(b.value, f"op {op.type} input {key}")))
            out[key] = vs[0] if len(vs) == 1 and key != "values" else Var(vs, any(v.batched for v in vs))
        return out

    def run(self, feeds: dict[str, np.ndarray], batched: bool = False) -> dict[str, Any]:
        """All block outputs for ``feeds`` (input name -> array of the declared dtype and shape).

        With ``batched`` the inputs' axis 0 holds N samples where the program declares 1; an op
        that would mix that axis raises ``NoBatch`` and the caller runs samples one by one.
        """
        if set(feeds) != set(self.inputs):
            raise ExportError(f"{self.package}: main takes inputs {sorted(self.inputs)}, got {sorted(feeds)}")
        env: dict[str, Var] = dict(self.consts)
        n = 1
        for name, arr in feeds.items():
            dt, dims = self.inputs[name]
            arr = np.ascontiguousarray(arr, dt)
            n = arr.shape[0] if batched else 1
            want = [n] + dims[1:] if batched and dims else dims
            if list(arr.shape) != want and not (None in want and len(want) == arr.ndim):
                raise ExportError(f"{self.package}: input {name!r} has shape {list(arr.shape)}, the program declares {dims}")
            env[name] = Var(arr, batched)
        for op in self.block.operations:
            if op.type == "const":
                continue
            name_attr = op.attributes.get("name")
            name = str(self._value(name_attr, "op name")) if name_attr is not None else op.outputs[0].name
            ctx = Ctx(op.type, name)
            try:
                results = OPS[op.type](ctx, self._inputs(op, env))
            except (NoBatch, ExportError):
                raise
            except (ValueError, IndexError, TypeError, KeyError) as exc:
                raise ExportError(f"{self.package}: {ctx.where()} failed: {type(exc).__name__}: {exc}") from None
            if len(results) != len(op.outputs):
                raise ExportError(f"{self.package}: {ctx.where()} gave {len(results)} outputs, the program declares {len(op.outputs)}")
            for out, res in zip(op.outputs, results):
                env[out.name] = self._conform(res, out, ctx, n)
        return {name: env[name].value for name in self.block.outputs}

    def _conform(self, res: Var, out: Any, ctx: Ctx, n: int) -> Var:
        """Round to the declared dtype (float16 emulation) and check the declared shape."""
        dt, dims = _tensor_dtype(self._mil, out.type)
        if dt is None:
            kind = out.type.WhichOneof("type")
            if kind == "tensorType" and out.type.tensorType.dataType != self._mil.DataType.Value("STRING"):
                name = self._mil.DataType.Name(out.type.tensorType.dataType)
                raise ExportError(f"{self.package}: {ctx.where()} declares a {name} output, a dtype the evaluator does not hold")
            return res  # strings (classLabel) and the probability dictionary
        arr = np.asarray(res.value)
        if dims and res.batched and dims[0] == 1:
            dims = [n] + dims[1:]
        if len(dims) != arr.ndim or any(d is not None and d != s for d, s in zip(dims, arr.shape)):
            if res.batched and n != 1:
                raise NoBatch(ctx.op)
            raise ExportError(
                f"{self.package}: {ctx.where()} -> {out.name!r} computed shape {list(arr.shape)}, the program declares {dims}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow is inf, as on the device; verify fails it
            return Var(arr.astype(dt, copy=False), res.batched)


# --------------------------------------------------------------------------- the public entry


class CoreMLEvaluator:
    """Runs a package like CoreML's predict: uint8 RGB in, label and label -> probability out."""

    name = NAME

    def __init__(self, package: Path):
        spec = read_model(package)  # what the model is, checked before its program is read
        desc = spec.description
        self.label_output = desc.predictedFeatureName
        self.probs_output = desc.predictedProbabilitiesName
        outs = [o.name for o in desc.output]
        # A classifier (label + label -> probability) or a model of plain multiarray outputs
        # (e.g. an autoencoder's reconstruction, anomaly score and flag), returned by name.
        self.is_classifier = bool(self.label_output or self.probs_output)
        self.output_names = outs
        if self.is_classifier and (not self.label_output or not self.probs_output or {self.label_output, self.probs_output} - set(outs)):
            raise ExportError(
                f"{package}: classifier outputs {self.label_output!r}/{self.probs_output!r} are not the model's outputs {outs}"
            )
        bad = [o.name for o in desc.output if not self.is_classifier and o.type.WhichOneof("Type") != "multiArrayType"]
        if bad:
            raise ExportError(f"{package}: outputs {bad} are neither a classifier's nor multiarrays; the evaluator cannot return them")
        feats = list(desc.input)
        if len(feats) != 1 or feats[0].type.WhichOneof("Type") != "imageType":
            raise ExportError(f"{package}: the evaluator expects one image input, the model has {[f.name for f in feats]}")
        it = feats[0].type.imageType
        self.input_name = feats[0].name
        self.color_space = it.DESCRIPTOR.fields_by_name["colorSpace"].enum_type.values_by_number[it.colorSpace].name
        if self.color_space not in ("RGB", "BGR"):
            raise ExportError(f"{package}: image color space {self.color_space} is not evaluated (RGB or BGR only)")
        self.height, self.width = int(it.height), int(it.width)
        self.program = MILProgram(package, spec)
        self.labels = self.program.labels
        wanted = {self.label_output, self.probs_output} if self.is_classifier else set(self.output_names)
        missing = wanted - set(self.program.block.outputs)
        if missing:
            raise ExportError(f"{package}: the program does not compute {sorted(missing)}, which the model description declares")
        # CoreML hands the program the image as float32 planes [1, 3, H, W], pixel values 0..255.
        got = self.program.inputs.get(self.input_name)
        if got is None or got[0] != np.float32 or got[1] != [1, 3, self.height, self.width]:
            raise ExportError(
                f"{package}: main's image input is {got}, expected float32 [1, 3, {self.height}, {self.width}]"
            )
        self._batch_ok = True

    def _planar(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3) or images.dtype != np.uint8:
            raise ExportError(f"CoreML input must be uint8 [N, {self.height}, {self.width}, 3], got {images.dtype} {list(images.shape)}")
        rgb = images[..., ::-1] if self.color_space == "BGR" else images
        return rgb.transpose(0, 3, 1, 2).astype(np.float32)

    def _runs(self, images: np.ndarray, batch: int) -> "list[dict[str, Any]]":
        """The program's outputs for ``images``: one dict per batch (or per image, when the
        program mixes the batch axis)."""
        planar = self._planar(images)
        runs: list[dict[str, Any]] = []
        for start in range(0, len(planar), batch):
            chunk = planar[start:start + batch]
            outs = None
            if self._batch_ok and len(chunk) > 1:
                try:
                    outs = [self.program.run({self.input_name: chunk}, batched=True)]
                except NoBatch:
                    self._batch_ok = False  # this program mixes the batch axis: run image by image from now on
            if outs is None:
                outs = [self.program.run({self.input_name: chunk[i:i + 1]}) for i in range(len(chunk))]
            runs += outs
        return runs

    def classify(self, images: np.ndarray, batch: int = 64) -> tuple[list[str], list[dict[str, float]]]:
        """(classLabel, classLabel_probs) per image, as CoreML's predict returns them."""
        if not self.is_classifier:
            raise ExportError(f"{self.program.package} is not a classifier; its outputs are {self.output_names}")
        labels: list[str] = []
        probs: list[dict[str, float]] = []
        for o in self._runs(images, batch):
            labels += list(o[self.label_output])
            probs += list(o[self.probs_output])
        return labels, probs

    def arrays(self, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        """Every multiarray output by name, stacked over the images (a model that is not a classifier)."""
        runs = self._runs(images, batch)
        return {name: np.concatenate([np.asarray(o[name]) for o in runs]) for name in self.output_names}

    def predict(self, images: np.ndarray, labels: list[str] | None = None) -> "np.ndarray | dict[str, np.ndarray]":
        """Probabilities in ``labels`` order (default: the package's classes), looked up by name;
        for a model that is not a classifier, its outputs by name (:meth:`arrays`).

        Looking up by name (as an app reading the dictionary does) is what makes a package whose
        class list was reordered disagree with labels.txt, instead of hiding it.
        """
        if not self.is_classifier:
            return self.arrays(images)
        names = list(labels if labels is not None else self.labels)
        top, dicts = self.classify(images)
        out = np.empty((len(dicts), len(names)), np.float32)
        for i, d in enumerate(dicts):
            missing = [n for n in names if n not in d]
            if missing:
                raise ExportError(f"{self.program.package}: classLabel_probs lacks label(s) {missing[:3]} of labels.txt")
            out[i] = [d[n] for n in names]
            if d[top[i]] != max(d.values()):
                raise ExportError(f"{self.program.package}: classLabel {top[i]!r} is not the most probable class of image {i}")
        return out
