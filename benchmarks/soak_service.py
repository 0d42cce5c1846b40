"""Soak test of the served Bento: thousands of requests from concurrent clients, no request lost.

Each run packages the model, starts a fresh `bentoml serve` (as a user restarting the service
would) and sends `--requests` requests from `--clients` threads: mostly `POST /score` with one
image, some `POST /score_batch` with 2-4 images, and a few bad uploads (text, a truncated PNG)
that must get a 400. Every valid answer is checked against the in-process score of its image.
Per run it reports failures by kind and status code, latency p50/p99/max, the longest gap
with no completed response (a stall), and the server log's error lines.

    .venv/bin/python -m benchmarks.soak_service [--runs 5] [--requests 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.bench_service import make_images, model_folder, serving
from nriqa.core.runtime import configure


def expected_scores(folder: Path, images: list[bytes]) -> list[float]:
    from nriqa.core.imaging import decode_image
    from nriqa.model.bundle import load_model
    from nriqa.model.prediction import predict_mos

    model, info = load_model(folder)
    return predict_mos(model, [decode_image(data) for data in images],
                       info["preprocessing"]).tolist()


def plan(total: int, image_count: int, seed: int) -> list[tuple[str, list[int]]]:
    """(kind, image indices) per request: 70% score, 25% score_batch, 5% bad uploads."""
    rng = random.Random(seed)
    requests_ = []
    for _ in range(total):
        draw = rng.random()
        if draw < 0.05:
            requests_.append(("bad", []))
        elif draw < 0.30:
            requests_.append(("score_batch", rng.sample(range(image_count), rng.randint(2, 4))))
        else:
            requests_.append(("score", [rng.randrange(image_count)]))
    return requests_


def send(session: requests.Session, url: str, kind: str, indices: list[int],
         images: list[bytes], expected: list[float], bad: dict[str, bytes]) -> tuple[int, str]:
    """(status, problem or '') for one request; a problem is a wrong or missing answer."""
    if kind == "bad":
        name = random.choice(sorted(bad))
        response = session.post(f"{url}/score", files={"image": (name, bad[name])}, timeout=300)
        ok = response.status_code == 400 and name in response.json().get("error", "")
        return response.status_code, "" if ok else f"{name}: {response.text[:200]}"
    if kind == "score":
        response = session.post(f"{url}/score", timeout=300,
                                files={"image": (f"{indices[0]}.jpg", images[indices[0]])})
        answers = [response.json()] if response.ok else []
    else:
        response = session.post(f"{url}/score_batch", timeout=300,
                                files=[("images", (f"{i}.jpg", images[i])) for i in indices])
        answers = response.json() if response.ok else []
    if response.status_code != 200:
        return response.status_code, response.text[:200]
    scores = [answer.get("mos") for answer in answers]
    wanted = [expected[i] for i in indices]
    if len(scores) != len(wanted) or any(s is None or abs(s - w) > 1e-4
                                         for s, w in zip(scores, wanted)):
        return 200, f"wrong answer: {scores} for {wanted}"
    return 200, ""


def soak_once(url: str, log_path: Path, images: list[bytes], expected: list[float],
              bad: dict[str, bytes], total: int, clients: int, seed: int) -> dict:
    work = plan(total, len(images), seed)
    cursor, lock, records = iter(range(total)), threading.Lock(), []
    log_start = log_path.stat().st_size

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                kind, indices = work[index]
                t0 = time.monotonic()
                try:
                    status, problem = send(session, url, kind, indices, images, expected, bad)
                except requests.RequestException as error:
                    status, problem = 0, f"{type(error).__name__}: {error}"
                records.append((kind, status, problem, t0, time.monotonic()))

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.monotonic() - start
    latencies = np.array([end - begin for *_, begin, end in records])
    finished = np.sort([start] + [end for *_, end in records])
    failed_valid = [(kind, status, problem) for kind, status, problem, *_ in records
                    if kind != "bad" and problem]
    server_log = log_path.read_text(errors="replace")[log_start:]
    problems = re.findall(r"(?m)^.*(?:Error|Traceback|WARNING|status=5\d\d).*$", server_log)
    return {
        "requests": len(records), "seconds": round(elapsed, 1),
        "requests_per_s": round(len(records) / elapsed, 1),
        "status_by_kind": {kind: dict(Counter(str(r[1]) for r in records if r[0] == kind))
                           for kind in ("score", "score_batch", "bad")},
        "failed_valid": len(failed_valid),
        "failed_bad_upload_checks": sum(1 for r in records if r[0] == "bad" and r[2]),
        "first_failures": failed_valid[:5],
        "latency_s_p50": round(float(np.percentile(latencies, 50)), 3),
        "latency_s_p99": round(float(np.percentile(latencies, 99)), 3),
        "latency_s_max": round(float(latencies.max()), 3),
        "longest_gap_s": round(float(np.diff(finished).max()), 3),
        "server_log_problems": len(problems),
        "first_server_log_problems": problems[:3],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="each on a fresh `bentoml serve`")
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    images = make_images(args.images, tuple(args.size))
    png = io.BytesIO()
    Image.open(io.BytesIO(images[0])).save(png, "PNG")
    bad = {"notes.txt": b"not an image at all", "cut.png": png.getvalue()[:400]}
    results = []
    with tempfile.TemporaryDirectory(prefix="nriqa-soak-") as tmp:
        folder, model_note = model_folder(Path(tmp))
        expected = expected_scores(folder, images)
        for run in range(args.runs):
            workdir = Path(tmp) / f"run{run}"
            workdir.mkdir()
            with serving(folder, workdir) as (url, log_path):
                result = soak_once(url, log_path, images, expected, bad, args.requests,
                                   args.clients, seed=run)
            results.append(result)
            print(json.dumps({"run": run + 1, **result}), flush=True)
    summary = {
        "model": model_note, "images": f"{args.images} JPEGs of {args.size[0]}x{args.size[1]}",
        "clients": args.clients, "runs": len(results),
        "requests": sum(r["requests"] for r in results),
        "failed_valid": sum(r["failed_valid"] for r in results),
        "latency_s_max": max(r["latency_s_max"] for r in results),
        "longest_gap_s": max(r["longest_gap_s"] for r in results),
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
