"""Drift monitor: false-alarm rate on photos like the training photos, and detection power on
photos of other domains made from them, with the sample sizes.

    .venv/bin/python -m bench.drift [--data-uri DIR] [--sample-size 40] [--repeats 100]
        [--model-dir EXPORT]

The model is the ImageNet EfficientNet-Lite backbone under a seeded head, exported as training
exports it, or a trained model's export (``--model-dir``); its monitoring signature gives the
embeddings. The reference is made from the train split as training makes it
(``monitoring.reference.reference_of``: 200 embeddings of half the train photos, and the other
half's predictions). Each repeat draws ``--sample-size`` eval photos (the null case) or their
shifted copies (recoloured, blurred, rotated, cropped; and other objects: scikit-image's sample
photos, cropped at random) and runs the monitor's test. Targets: no drift
in at least 95% of the null repeats; drift at p < 0.01 in every repeat of every shift.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from bench.common import Target, finish, format_table, progress

IMAGE_SIZE = 224


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _recolour(image: Image.Image) -> Image.Image:
    red, green, blue = image.convert("RGB").split()
    return Image.merge("RGB", (blue, red, green))  # channels rotated: other-coloured labels


def _crop(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((width // 4, height // 4, 3 * width // 4, 3 * height // 4))


SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "recoloured": _recolour,
    "blurred": lambda image: image.filter(ImageFilter.GaussianBlur(4)),
    "rotated": lambda image: image.rotate(90, expand=True),
    "cropped": _crop,
}


def _other_objects(count: int, seed: int) -> list[bytes]:
    """Random crops of scikit-image's sample photos (a cat, coffee, a rocket, ...)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
    ]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.5, 0.9))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crops.append(_jpeg(photo.crop((left, top, left + side, top + side))))
    return crops


def export_backbone_model(folder: str, num_classes: int) -> str:
    """The pipeline's architecture at 224 px (ImageNet backbone, a seeded untrained head),
    exported as training exports it, under ``folder``; returns its path."""
    import keras

    from components.lib.modelling.model import build_classifier, export_serving_model

    keras.utils.set_random_seed(7)
    model = build_classifier(num_classes, IMAGE_SIZE, 0.2)
    path = os.path.join(folder, "model")
    export_serving_model(model, [str(i) for i in range(num_classes)], IMAGE_SIZE, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from components.lib.monitoring.drift import compare
    from components.lib.monitoring.reference import reference_of
    from components.lib.monitoring.sampler import Sample
    from components.lib.serving.prediction import ServingModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-uri", default=os.environ.get("BEER_DATA_DIR", ""))
    parser.add_argument("--sample-size", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=100, help="null repeats (%(default)s)")
    parser.add_argument("--shift-repeats", type=int, default=20, help="(%(default)s)")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument(
        "--model-dir",
        help="a trained model's export to test with (default: the seeded ImageNet backbone)",
    )
    args = parser.parse_args(argv)
    if not args.data_uri or not os.path.isdir(os.path.join(args.data_uri, "train")):
        print("error: --data-uri (or BEER_DATA_DIR) must be the beer photos", file=sys.stderr)
        return 2
    classes = sorted(os.listdir(os.path.join(args.data_uri, "train")))

    def photos(split: str) -> tuple[list[Image.Image], np.ndarray]:
        found = [
            (os.path.join(args.data_uri, split, name, file), index)
            for index, name in enumerate(classes)
            for file in sorted(os.listdir(os.path.join(args.data_uri, split, name)))
        ]
        return [Image.open(path).convert("RGB") for path, _ in found], np.array(
            [label for _, label in found]
        )

    with tempfile.TemporaryDirectory() as folder:
        if not args.model_dir:
            progress("exporting the ImageNet backbone with the monitoring signature")
        model_dir = args.model_dir or export_backbone_model(folder, len(classes))
        model = ServingModel(model_dir, with_embeddings=True)
        if not model.has_embeddings:
            print(f"error: {model_dir} has no monitoring signature", file=sys.stderr)
            return 2

        def embed(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
            embeddings, probabilities = [], []
            for start in range(0, len(images), 32):
                predicted = model.predict(images[start : start + 32])
                embeddings.append(predicted.embeddings)
                probabilities.append(predicted.probabilities)
            return np.concatenate(embeddings), np.concatenate(probabilities)

        train, train_labels = photos("train")
        evaluation, _ = photos("eval")
        progress(f"embedding {len(train)} train and {len(evaluation)} eval photos")
        train_embeddings, train_probabilities = embed([_jpeg(image) for image in train])
        rng = np.random.default_rng(0)
        held_out = rng.permutation(len(train))
        in_reference, for_predictions = held_out[: len(train) // 2], held_out[len(train) // 2 :]
        reference = reference_of(
            [str(i) for i in range(len(classes))],
            train_embeddings[in_reference],
            train_labels[in_reference],
            train_probabilities[for_predictions],
        )
        pools = {"eval split (null)": embed([_jpeg(image) for image in evaluation])}
        for name, shift in SHIFTS.items():
            progress(f"embedding the {name} eval photos")
            pools[name] = embed([_jpeg(shift(image)) for image in evaluation])
        pools["other objects"] = embed(_other_objects(len(evaluation), seed=1))

    rows, figures, targets = [], {}, []
    for name, (embeddings, probabilities) in pools.items():
        null = name.endswith("(null)")
        repeats = args.repeats if null else args.shift_repeats
        progress(f"{repeats} tests on {name}")
        drifts, p_values = [], []
        for repeat in range(repeats):
            chosen = rng.choice(len(embeddings), args.sample_size, replace=False)
            sample = Sample.of(embeddings[chosen], probabilities[chosen])
            verdict = compare(reference, sample, permutations=args.permutations, seed=repeat)
            drifts.append(verdict.drift)
            p_values.append(verdict.p_value)
        rate = float(np.mean(drifts))
        strong = float(np.mean(np.array(p_values) < 0.01))
        figures[name] = {
            "repeats": repeats,
            "drift_rate": rate,
            "p_below_0_01_rate": strong,
            "median_p": float(np.median(p_values)),
        }
        rows.append((name, repeats, f"{rate:.0%}", f"{strong:.0%}", f"{np.median(p_values):.4f}"))
        if null:
            targets.append(Target("no drift on like photos", 1 - rate, 0.95, True))
        else:
            targets.append(Target(f"drift at p < 0.01 on {name}", strong, 1.0, True))
    print(
        f"reference: {len(reference.embeddings)} train embeddings, {len(reference.confidences)} "
        f"held-out predictions; sample: {args.sample_size} photos; {args.permutations} "
        "permutations; drift when a test's p < 0.05 / 3"
    )
    print(format_table(("photos", "repeats", "drift", "p < 0.01", "median p"), rows))
    figures |= {
        "sample_size": args.sample_size,
        "reference_size": len(reference.embeddings),
        "permutations": args.permutations,
    }
    return finish("drift", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
