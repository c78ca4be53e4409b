"""Request sampling for the drift monitor: what it adds to a request's latency.

    .venv/bin/python -m bench.sampling_overhead [--images DIR] [--requests 150] [--rounds 4]

Two servers (``python -m pipeline.serve``) answer the same model side by side on loopback: one
with ``--no-sample-requests``, one sampling (the monitoring signature's embeddings, a reservoir
of 256 per window, a window written every 5 s: 60 times as often as the default 300 s). The
model is the pipeline's architecture (the ImageNet EfficientNet-Lite backbone, a seeded head) at
224 px, exported as training exports it. One client sends one photo per request over a
kept-alive connection; the servers take turns each round, so other work on the machine slows
both alike. Target: the sampling server's p50 at most 5% above the other's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import Target, finish, format_table, percentile, progress
from bench.drift import export_backbone_model
from bench.serve_latency import Cell, answer_classes, deploy_locally, read_images, run_clients
from bench.serve_load import server_process

MAX_OVERHEAD = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=os.environ.get("BEER_DATA_DIR", ""))
    parser.add_argument("--requests", type=int, default=150, help="per server per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if not args.images:
        print("error: --images (or BEER_DATA_DIR) must be a folder of photos", file=sys.stderr)
        return 2
    images = read_images(Path(args.images), 64)
    with tempfile.TemporaryDirectory() as work:
        progress("exporting the model")
        model_dir = export_backbone_model(work, 5)
        state = os.path.join(work, "state")
        path = deploy_locally(model_dir, state)
        serve = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", state]
        samples = os.path.join(work, "samples")
        sampling = ["--sample-uri", samples, "--sample-interval-s", "5"]
        with (
            server_process([*serve, "--no-sample-requests"], os.path.join(work, "off.log")) as off,
            server_process([*serve, *sampling], os.path.join(work, "on.log")) as on,
        ):
            servers = {"sampling off": off.url, "sampling on": on.url}
            expected = answer_classes(off.url, path, images)
            assert answer_classes(on.url, path, images) == expected  # warm, and the same answers
            cells = {name: Cell() for name in servers}
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in order:
                    progress(f"round {round_ + 1}: {name}")
                    cell = run_clients(servers[name], path, images, expected, args.requests, 1)
                    cells[name].latencies += cell.latencies
                    cells[name].wrong_answers += cell.wrong_answers
        windows = len(list(Path(samples).rglob("*.npz")))
    p50 = {name: percentile(cell.latencies, 0.5) * 1000 for name, cell in cells.items()}
    p99 = {name: percentile(cell.latencies, 0.99) * 1000 for name, cell in cells.items()}
    rows = [
        (name, len(cells[name].latencies), f"{p50[name]:.1f}", f"{p99[name]:.1f}")
        for name in servers
    ]
    print(format_table(("server", "requests", "p50 ms", "p99 ms"), rows))
    overhead = p50["sampling on"] / p50["sampling off"] - 1
    print(f"p50 overhead of sampling: {overhead:+.1%}; sample windows written: {windows}")
    wrong = sum(cell.wrong_answers for cell in cells.values())
    targets = [
        Target("p50 overhead of sampling", overhead, MAX_OVERHEAD, False),
        Target("wrong answers", wrong, 0, False),
        Target("sample windows written", windows, 1, True),
    ]
    figures = {"p50_ms": p50, "p99_ms": p99, "overhead": overhead, "windows": windows}
    return finish("sampling_overhead", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
