"""Run an exported TFLite model with LiteRT directly, using nothing but its contract.json.

    python examples/predict_with_litert.py export/fit_cnn/1 shoe.png [more images...]

This is what an app developer does: read the input contract (size, colour order, dtype,
quantization), turn an image into that tensor, run the interpreter, map scores to labels.
No tfcnn import: the contract is the whole interface.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("version_dir", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--variant", default="tflite_int8", help="tflite_float32, tflite_float16, tflite_dynamic or tflite_int8")
    p.add_argument("--top-k", type=int, default=3)
    args = p.parse_args()

    contract = json.loads((args.version_dir / "contract.json").read_text())
    spec = contract["input"]  # RGB uint8, height x width, resize bilinear, normalization in-graph
    artifact = contract["artifacts"][args.variant]
    labels = contract["labels"]["names"]
    interpreter = Interpreter(model_path=str(args.version_dir / artifact["file"]), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quant = artifact["outputs"][0]["quantization"]  # None for float outputs

    for path in args.images:
        rgb = Image.open(path).convert(spec["color_order"]).resize((spec["width"], spec["height"]), Image.BILINEAR)
        tensor = np.asarray(rgb, dtype=spec["dtype"])[None]  # [1, H, W, 3] uint8, raw pixels
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        scores = (raw.astype(np.float32) - quant["zero_point"]) * quant["scale"] if quant else raw.astype(np.float32)
        best = np.argsort(-scores)[: args.top_k]
        print(f"{path}: " + ", ".join(f"{labels[i]} {scores[i]:.3f}" for i in best))


if __name__ == "__main__":
    main()
