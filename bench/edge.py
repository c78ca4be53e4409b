"""Edge export: the TFLite models' accuracy and size beside the SavedModel's, on an eval split.

    .venv/bin/python -m bench.edge MODEL_DIR [--data-uri DIR]

MODEL_DIR is a train step's model artifact written with ``export_tflite=true``. The models are
scored by the evaluate step's own library calls. Target: int8 within 1 point of the
SavedModel's accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.common import Target, finish, format_table, progress

INT8_TOLERANCE = 0.01


def _folder_bytes(folder: str, skip: tuple[str, ...] = ()) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, dirs, names in os.walk(folder)
        if not any(os.path.relpath(root, folder).startswith(part) for part in skip)
        for name in names
    )


def main(argv: list[str] | None = None) -> int:
    from components.lib.evaluation.edge import evaluate_edge_models
    from components.lib.evaluation.metrics import evaluate_saved_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--data-uri", default=os.environ.get("BEER_DATA_DIR", ""))
    args = parser.parse_args(argv)
    progress(f"scoring {args.model_dir} on {args.data_uri}/eval")
    reference = evaluate_saved_model(args.model_dir, args.data_uri)
    edge = evaluate_edge_models(args.model_dir, args.data_uri)
    if not edge:
        print(f"{args.model_dir} has no TFLite export (train with export_tflite=true)")
        return 2
    saved_bytes = _folder_bytes(args.model_dir, skip=("tflite", "tensorboard"))
    rows = [["SavedModel", f"{saved_bytes / 1e6:.2f}", f"{reference.accuracy:.4f}", ""]]
    rows += [
        [
            score.model.kind,
            f"{score.model.size_bytes / 1e6:.2f}",
            f"{score.evaluation.accuracy:.4f}",
            f"{score.evaluation.accuracy - reference.accuracy:+.4f}",
        ]
        for score in edge
    ]
    print(format_table(["model", "MB", "accuracy", "change"], rows))
    print(f"eval photos: {reference.count}")
    [int8] = [score for score in edge if score.model.kind == "int8"]
    drop = reference.accuracy - int8.evaluation.accuracy
    figures = {
        "eval_photos": reference.count,
        "saved_model_bytes": saved_bytes,
        "saved_model_accuracy": reference.accuracy,
        "tflite": [score.to_dict(reference) for score in edge],
    }
    return finish("edge", figures, [Target("int8 accuracy drop", drop, INT8_TOLERANCE, False)])


if __name__ == "__main__":
    sys.exit(main())
