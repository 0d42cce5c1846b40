"""Serving throughput: the BentoML service under concurrent load vs. the model in-process.

Three ways to score the same images (512x384 JPEGs by default), measured in one run:

* raw batch   `nriqa.model.prediction.predict_mos` over all decoded images at once, in-process.
* per image   one `model.predict` call per image (the seed's way of scoring).
* service     the packaged Bento under `bentoml serve`, N concurrent clients each POSTing
              one image at a time to /score (upload, decode, crops, batching).

The model is `models/` (model.keras + model.json) if it exists, else a freshly built
default-size `make_model()` with params.yaml's preprocessing (scores are meaningless then;
the work per image is the same).

    .venv/bin/python -m benchmarks.bench_service [--images 64] [--clients 16] [--requests 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from nriqa.core.runtime import configure
from tests.helpers import free_port

PROJECT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_images(count: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(0)
    width, height = size
    out = []
    for i in range(count):
        base = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BICUBIC))
        noisy = np.clip(image + rng.normal(0, 2 + i % 12, image.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def model_folder(workdir: Path) -> tuple[Path, str]:
    if (PROJECT / "models" / "model.keras").is_file():
        return PROJECT / "models", "trained model from models/ (params.yaml settings)"
    from nriqa.core.config import load_config
    from nriqa.core.imaging import preprocessing_config
    from nriqa.model.network import make_model

    config = load_config(PROJECT / "params.yaml")
    folder = workdir / "model"
    folder.mkdir()
    make_model(config.model).save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps({"preprocessing": preprocessing_config(config)}))
    return folder, "freshly built default make_model() (params.yaml model section; untrained)"


def bench_in_process(folder: Path, images: list[bytes], repeats: int) -> dict:
    from nriqa.core.imaging import crops_for_prediction, decode_image
    from nriqa.model.bundle import load_model
    from nriqa.model.prediction import predict_mos

    model, info = load_model(folder)
    pre = info["preprocessing"]
    decoded = [decode_image(data) for data in images]
    predict_mos(model, decoded[:4], pre)  # warm-up

    def raw_batch() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            predict_mos(model, decoded, pre)
        return repeats * len(decoded) / (time.perf_counter() - start)

    crops = [crops_for_prediction(image, pre) for image in decoded]
    model.predict(crops[0].astype(np.float32), verbose=0)  # warm-up
    start = time.perf_counter()
    single_scores = [float(model.predict(c.astype(np.float32), verbose=0)[:, 0].mean())  # column 0: MOS
                     for c in crops]
    single = len(crops) / (time.perf_counter() - start)
    batch_scores = predict_mos(model, decoded, pre)
    return {"raw_batch": raw_batch, "per_image_predict_images_per_s": single,
            "crops_per_image": len(crops[0]), "scores": batch_scores.tolist(),
            "max_abs_diff_batch_vs_single": float(np.max(np.abs(batch_scores - single_scores)))}


@contextmanager
def serving(folder: Path, workdir: Path, **env_overrides: str):
    """Package `folder` into a Bento under `workdir` and run `bentoml serve` on it; yields
    the URL once a real /score has answered, and the path of the server's log."""
    env = {**os.environ, "BENTOML_HOME": str(workdir / "bentoml_home"), **env_overrides}
    subprocess.run([sys.executable, "-m", "stages.package", "--model-dir",
                    str(folder), "--report", str(workdir / "bento.json")],
                   cwd=PROJECT, env=env, check=True, capture_output=True)
    bento = json.loads((workdir / "bento.json").read_text())["bento_tag"]
    url = f"http://127.0.0.1:{free_port()}"
    log_path = workdir / "serve.log"
    log = log_path.open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", bento,
                               "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        image = make_images(1, (128, 96))[0]
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.post(f"{url}/score", files={"image": ("w.jpg", image)},
                                 timeout=60).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the service did not start; see {log_path}")
            time.sleep(1)
        yield url, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def bench_service(folder: Path, images: list[bytes], workdir: Path, clients: int,
                  total: int, rounds: int, raw_batch) -> dict:
    """`rounds` alternations of a raw-batch pass and `total` service requests, so that both
    see the same machine load (this machine is shared)."""
    with serving(folder, workdir) as (url, _):
        def client(index: int, count: int) -> list[tuple[int, float, int]]:
            out = []
            with requests.Session() as session:
                for k in range(count):
                    i = (index + k * clients) % len(images)
                    t0 = time.perf_counter()
                    response = session.post(f"{url}/score", timeout=300,
                                            files={"image": (f"{i}.jpg", images[i])})
                    out.append((response.status_code, time.perf_counter() - t0, i,
                                response.json().get("mos") if response.ok else None))
            return out

        # Warm-up round: traces the model's graph and fills the decoders' threads.
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients), [4] * clients))
        per_client = max(1, total // clients)
        raw_rates, service_rates, results = [], [], []
        for _ in range(rounds):
            raw_rates.append(raw_batch())
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                round_results = [r for rs in pool.map(client, range(clients),
                                                      [per_client] * clients) for r in rs]
            elapsed = time.perf_counter() - start
            service_rates.append(sum(r[0] == 200 for r in round_results) / elapsed)
            results += round_results
    ok = [r for r in results if r[0] == 200]
    latencies = np.array([r[1] for r in ok]) * 1000
    return {"raw_batch_images_per_s_by_round": raw_rates,
            "service_requests_per_s_by_round": service_rates,
            "raw_batch_images_per_s": float(np.median(raw_rates)),
            "service_requests_per_s": float(np.median(service_rates)),
            "requests": len(results), "failed": len(results) - len(ok),
            "status_codes": sorted({r[0] for r in results}),
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p99": float(np.percentile(latencies, 99)),
            "service_scores": {r[2]: r[3] for r in ok}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 384), metavar=("W", "H"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256, help="timed requests per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of raw batch and service; medians are reported")
    parser.add_argument("--repeats", type=int, default=2, help="raw-batch passes over the images")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    images = make_images(args.images, tuple(args.size))
    with tempfile.TemporaryDirectory(prefix="nriqa-bench-") as tmp:
        workdir = Path(tmp)
        folder, model_note = model_folder(workdir)
        local = bench_in_process(folder, images, args.repeats)
        served = bench_service(folder, images, workdir, args.clients, args.requests,
                               args.rounds, local["raw_batch"])
    diffs = [abs(mos - local["scores"][i]) for i, mos in served.pop("service_scores").items()]
    results = {
        "model": model_note, "images": f"{args.images} JPEGs of {args.size[0]}x{args.size[1]}",
        "crops_per_image": local["crops_per_image"], "clients": args.clients,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "per_image_predict_images_per_s": local["per_image_predict_images_per_s"],
        **served,
        "service_vs_raw_batch": served["service_requests_per_s"] / served["raw_batch_images_per_s"],
        "load_average_after": os.getloadavg(),
        "max_abs_diff_service_vs_in_process": max(diffs) if diffs else None,
        "max_abs_diff_batch_vs_per_image": local["max_abs_diff_batch_vs_single"],
    }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
