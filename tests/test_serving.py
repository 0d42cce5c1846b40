"""The pieces of the service (`nriqa.serving`) on their own, without a packaged model or a server:
settings and their overrides, the upload checks, the batcher, uploads to scores, the page app.
test_service.py checks them together, behind a real `bentoml serve`."""

from __future__ import annotations

import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import yaml
from pathspec import PathSpec
from starlette.responses import JSONResponse

from nriqa.core.categories import DEFAULT_THRESHOLDS, categorize
from nriqa.core.errors import NriqaError
from nriqa.ops.packaging import RUNTIME_FILES, RUNTIME_PATH, check_runtime
from nriqa.serving import api
from nriqa.serving.api import UploadScorer
from nriqa.serving.batching import ModelBatcher
from nriqa.serving.middleware import UploadGuard, shown_name, upload_names
from nriqa.serving.quality_map import MAP_REACH_SPACINGS, ramp
from nriqa.serving.responses import ImageError, Score
from nriqa.serving.settings import (
    ServingSettings,
    model_tag,
    serving_settings,
    stored_model,
)
from nriqa.serving.webpage import (
    ASSETS,
    CONTENT_SECURITY_POLICY,
    RUNTIME_DIR,
    on_device_unavailable,
    page_config,
    webpage_app,
)
from tests.helpers import PROJECT, run, tool_env
from tests.service_helpers import TINY_PREPROCESSING, encode, png_claiming, textured

SERVE = {"max_upload_bytes": 200_000, "max_pixels": 20_000, "max_batch_images": 3,
         "max_batch_pixels": 30_000, "max_batch_size": 2}


def stored(folder: Path, serve: dict = SERVE) -> SimpleNamespace:
    """What the service reads of a model in the BentoML store: tag, folder, metadata."""
    return SimpleNamespace(tag="nriqa:abc", path=str(folder), info=SimpleNamespace(metadata={
        "registry_version": "3", "mlflow_run_id": "run-abc123", "serve": serve,
        "categories": dict(DEFAULT_THRESHOLDS)}))


MODEL_INFO = {"preprocessing": TINY_PREPROCESSING, "mos_range": [0.0, 9.0]}  # model.json's


def settings(folder: Path) -> ServingSettings:
    return serving_settings(stored(folder), MODEL_INFO, environ={})


# --- Settings -------------------------------------------------------------------------------------

def test_model_tag_from_the_environment_then_the_bento_then_the_default(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    assert model_tag(src, environ={}) == "nriqa:latest"
    (tmp_path / "bento.yaml").write_text("labels:\n  model_tag: nriqa:v7\n")
    assert model_tag(src, environ={}) == "nriqa:v7"
    assert model_tag(src, environ={"NRIQA_MODEL_TAG": "nriqa:v2"}) == "nriqa:v2"


def test_settings_come_from_the_model_and_the_environment_overrides_limits(tmp_path):
    read = settings(tmp_path)
    assert (read.model_tag, read.model_version, read.mlflow_run_id) == ("nriqa:abc", "3", "run-abc123")
    assert read.examples_dir == tmp_path / "examples"
    assert read.preprocessing == TINY_PREPROCESSING and read.max_pixels == 20_000
    overridden = serving_settings(stored(tmp_path), MODEL_INFO,
                                  environ={"NRIQA_MAX_PIXELS": "500", "NRIQA_MODEL_TAG": "x"})
    assert overridden.max_pixels == 500 and overridden.max_batch_size == 2


def test_the_page_draws_on_the_served_models_mos_scale(tmp_path):
    # A KADID-10k model scores 1..5: the page's scale, last category floor and colours follow.
    kadid = serving_settings(stored(tmp_path), {**MODEL_INFO, "mos_range": [1.0, 5.0]}, environ={})
    config = page_config(kadid, examples=[])
    assert config["scale"] == [1.0, 5.0] and config["categories"][-1][1] == 1.0
    assert config["map_reach_spacings"] == MAP_REACH_SPACINGS  # the map drawn as map_values
    assert [mos for mos, _ in config["ramp"]] == [mos for mos, _ in ramp((1.0, 5.0))]
    assert page_config(settings(tmp_path), examples=[])["scale"] == [0.0, 9.0]


def test_settings_errors_say_what_to_do(tmp_path):
    old = {key: value for key, value in SERVE.items() if key != "max_batch_pixels"}
    with pytest.raises(NriqaError, match=r"packaged without serve.max_batch_pixels.*"
                                         r"NRIQA_MAX_BATCH_PIXELS"):
        serving_settings(stored(tmp_path, old), MODEL_INFO, environ={})
    assert serving_settings(stored(tmp_path, old), MODEL_INFO,
                            environ={"NRIQA_MAX_BATCH_PIXELS": "9"}).max_batch_pixels == 9
    with pytest.raises(NriqaError, match="NRIQA_MAX_PIXELS='lots': expected a whole number"):
        serving_settings(stored(tmp_path), {**MODEL_INFO, "preprocessing": {}}, environ={"NRIQA_MAX_PIXELS": "lots"})
    with pytest.raises(NriqaError, match="NRIQA_MAX_BATCH_SIZE='0': expected a whole number of at least 1"):
        serving_settings(stored(tmp_path), {**MODEL_INFO, "preprocessing": {}}, environ={"NRIQA_MAX_BATCH_SIZE": "0"})
    missing = SimpleNamespace(tag="nriqa:nope", stored=None)  # a BentoModel the store lacks
    with pytest.raises(NriqaError, match="model nriqa:nope is not in the BentoML model store"):
        stored_model(missing)
    with pytest.raises(NriqaError, match="dvc repro package"):
        UploadScorer.for_model(missing)  # at service start: no model is loaded


@pytest.mark.integration  # starts a Python process
def test_service_imports_without_a_model_store(tmp_path):
    """The model store is read when the service starts, not when service.py is imported."""
    home = tmp_path / "bentoml_home"
    result = run([sys.executable, "-c", "import service; svc = service.NRIQA; "
                  "print(svc.inner.bento_model.tag, sorted(svc.apis))"], cwd=PROJECT,
                 env=tool_env(BENTOML_HOME=str(home), NRIQA_MODEL_TAG="nriqa:abc123"), timeout=120)
    assert result.stdout.split("\n")[0] == "nriqa:abc123 ['score', 'score_batch']"
    assert not (home / "models").exists() or not any((home / "models").iterdir())


# --- Upload checks --------------------------------------------------------------------------------

def request(app, method: str, path: str, **kwargs) -> httpx.Response:
    """One request to an ASGI app, in this process."""
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nriqa") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(send())


async def chunks():
    yield b"sent without a Content-Length"


async def echo(scope, receive, send) -> None:
    """An app that answers with the size of the body it got."""
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


@pytest.fixture
def guarded(tmp_path) -> UploadGuard:
    return UploadGuard(echo, settings=lambda: settings(tmp_path))


PNG = encode(textured(1), "PNG")
REFUSED = [
    # (path, request keyword arguments, status, words of the message)
    ("/score", {"content": b"x" * 200_001}, 413, "200001 bytes, more than the limit of 200000"),
    ("/score", {"content": chunks()}, 411, "Content-Length"),
    ("/score", {"json": {"image": "/etc/passwd"}}, 415, "multipart/form-data upload in the field `image`"),
    ("/score", {"files": {"image": (None, "http://example.com/x.jpg")}}, 400, "must be a file upload"),
    ("/score", {"files": {"picture": ("a.png", PNG)}}, 400, "unexpected form field `picture`"),
    ("/score", {"files": {"image": ("a.png", PNG)}, "data": {"map": "please"}}, 400,
     "`map` must be true or false"),
    ("/score", {"files": [("image", ("a.png", PNG))] * 2}, 400, "use `score_batch`"),
    ("/score_batch", {"files": [("images", ("a.png", PNG))] * 4}, 413,
     "more than 3 images in one request"),
    ("/score_batch", {"files": {"comment": (None, "none")}}, 400, "unexpected form field `comment`"),
]


@pytest.mark.parametrize("path, request_kwargs, status, words", REFUSED,
                         ids=[f"{case[0]} {case[2]} {case[3][:20]}" for case in REFUSED])
def test_upload_guard_refuses_before_bentoml_parses(guarded, path, request_kwargs, status, words):
    response = request(guarded, "POST", path, **request_kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_upload_guard_passes_good_uploads_whole(guarded):
    response = request(guarded, "POST", "/score", files={"image": ("a.png", PNG)},
                       data={"map": "true"})
    assert response.status_code == 200 and int(response.text) > len(PNG)  # the form, replayed
    response = request(guarded, "POST", "/score_batch", files=[("images", ("a.png", PNG))] * 3)
    assert response.status_code == 200
    assert request(guarded, "GET", "/ui/").status_code == 200  # not an upload: untouched
    # Not a scoring API: only its size is checked.
    assert request(guarded, "POST", "/ui/preview", content=PNG).text == str(len(PNG))


async def form_echo(scope, receive, send) -> None:
    """An app that answers with the form it got (each part's name; file name, content type and
    size, or text), and the client's names that UploadGuard passed on (`upload_names` of
    files named upload-0, -1...)."""
    from starlette.requests import Request

    form = await Request(scope, receive).form()
    parts = [[name, value.filename, value.content_type, len(await value.read())]
             if hasattr(value, "read") else [name, value] for name, value in form.multi_items()]
    names = upload_names([Path(f"tmpa1b2c3d4upload-{n}") for n in range(3)], scope)
    await JSONResponse({"parts": parts, "names": names})(scope, receive, send)


def test_upload_guard_keeps_client_file_names_off_the_disk(tmp_path):
    """BentoML stores each upload in a temporary file named after the client's file name (a
    500 past 255 bytes: 85 x "日"); the guard renames each file part upload-<n> and passes the
    client's names on for the error messages, shortened to 100 characters, without folders or
    unprintable characters."""
    guarded = UploadGuard(form_echo, settings=lambda: settings(tmp_path))
    names = ["日" * 85 + ".jpg", "é" * 150 + ".jpg", "../dir\\b.png"]
    response = request(guarded, "POST", "/score_batch",
                       files=[("images", (name, PNG, "image/png")) for name in names])
    assert response.status_code == 200, response.text
    assert response.json() == {
        "parts": [["images", f"upload-{n}", "image/png", len(PNG)] for n in range(3)],
        "names": [names[0], "é" * 79 + "…" + "é" * 16 + ".jpg", "b.png"]}
    assert [shown_name("bell\x07.png"), shown_name(""), shown_name(None)] == [
        "bell?.png", "upload", "upload"]
    response = request(guarded, "POST", "/score", files={"image": ("C:\\photos\\a.png", PNG)},
                       data={"map": "true"})
    assert response.json() == {"parts": [["map", "true"], ["image", "upload-0", "image/png", len(PNG)]],
                               "names": ["a.png", "upload", "upload"]}


# --- Batching -------------------------------------------------------------------------------------

def fake_model(calls: list[int], fail: bool = False):
    """`score_crop_sets` of a pretend model: each crop's score is its mean grey level on 0..9."""
    def score_crop_sets(crop_sets):
        calls.append(len(crop_sets))
        if fail:
            raise RuntimeError("the model fell over")
        crop_scores = [np.asarray(crops, dtype=np.float32).reshape(len(crops), -1).mean(axis=1)
                       / 255 * 9 for crops in crop_sets]
        mos = np.array([scores.mean() for scores in crop_scores])
        probabilities = np.linspace(1, 24, 24) / 600
        probabilities[-1] += 0.5  # type 24 stands out
        probabilities = np.tile(probabilities, (len(crop_sets), 1))
        return mos, probabilities, crop_scores
    return score_crop_sets


def test_batcher_merges_concurrent_requests_up_to_its_limit():
    calls: list[int] = []
    batcher = ModelBatcher(fake_model(calls), max_images=3)
    crop_sets = [np.full((2, 4), value, dtype=np.uint8) for value in range(0, 250, 50)]

    async def five_requests():
        return await asyncio.gather(*(batcher.score([crops]) for crops in crop_sets))

    results = asyncio.run(five_requests())
    assert calls == [3, 2]  # all five were waiting when the first call began
    assert [mos for ((mos, _, _),) in results] == pytest.approx(
        [v / 255 * 9 for v in range(0, 250, 50)])


def test_batcher_gives_a_model_error_to_every_waiting_request():
    batcher = ModelBatcher(fake_model([], fail=True), max_images=4)

    async def two_requests():
        return await asyncio.gather(batcher.score([np.zeros((1, 4))]),
                                    batcher.score([np.zeros((1, 4))]), return_exceptions=True)

    assert [str(result) for result in asyncio.run(two_requests())] == ["the model fell over"] * 2


# --- Uploads to scores ----------------------------------------------------------------------------

def upload(folder: Path, name: str, data: bytes) -> Path:
    """An uploaded file. (BentoML names it "tmp" + 8 random characters + "upload-<n>", the name
    UploadGuard gave; the client's name comes apart, `middleware.upload_names`.)"""
    path = folder / f"tmpa1b2c3d4{name}"
    path.write_bytes(data)
    return path


def test_scorer_answers_scores_and_names_bad_files(tmp_path):
    calls: list[int] = []
    scorer = UploadScorer(fake_model(calls), settings(tmp_path))
    good = upload(tmp_path, "photo.png", PNG)
    answer = asyncio.run(scorer.score(good, with_map=True))
    assert isinstance(answer, Score) and answer.model_version == "3"
    assert answer.category == categorize(answer.mos, DEFAULT_THRESHOLDS)
    assert [d.type for d in answer.distortions] == [24, 23, 22] and not answer.distortion_note
    near_uniform = (4.0, np.full(24, 1 / 24), np.array([4.0]))
    quiet = scorer.answer(near_uniform, None)
    assert quiet.distortions == [] and quiet.distortion_note == "no distortion stands out"
    values = [v for row in answer.quality_map.scores for v in row if v is not None]
    assert np.mean(values) == pytest.approx(answer.mos, abs=1e-5)
    assert asyncio.run(scorer.score(good)).quality_map is None

    for name, data, words in [("notes.txt", b"hello", "notes.txt: not an image"),
                              ("big.png", png_claiming(400, 300), "big.png: ")]:
        refused = asyncio.run(scorer.score(upload(tmp_path, name, data), name=name))
        assert isinstance(refused, JSONResponse) and refused.status_code == HTTPStatus.BAD_REQUEST
        assert json.loads(refused.body)["error"].startswith(words)
    assert calls == [1, 1]  # bad files never reach the model


def test_an_image_too_large_for_free_memory_is_a_413(tmp_path, monkeypatch):
    # Running out of memory cannot be arranged on a shared machine; the decoder is made to.
    def out_of_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(api, "decode_image", out_of_memory)
    scorer = UploadScorer(fake_model([]), settings(tmp_path))
    image = upload(tmp_path, "huge.png", PNG)
    refused = asyncio.run(scorer.score(image, name="huge.png"))
    assert refused.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert json.loads(refused.body)["error"].startswith("huge.png: too large to score")
    (answer,) = asyncio.run(scorer.score_batch([image], ["huge.png"]))
    assert isinstance(answer, ImageError) and answer.error.startswith("huge.png: too large")


def test_scorer_batches_keep_order_and_cap_pixels(tmp_path):
    scorer = UploadScorer(fake_model([]), settings(tmp_path))
    small = [upload(tmp_path, f"{i}.png", encode(textured(i), "PNG")) for i in range(3)]  # 96x64
    bad = upload(tmp_path, "cut.png", PNG[:300])
    answers = asyncio.run(scorer.score_batch([small[0], bad, small[1]],
                                             ["0.png", "cut.png", "1.png"]))
    assert [type(answer) for answer in answers] == [Score, ImageError, Score]
    assert answers[1].error.startswith("cut.png: ")
    assert asyncio.run(scorer.score(bad)).body.startswith(b'{"error":"upload: ')  # no name given
    too_many = asyncio.run(scorer.score_batch(small + small[:2]))  # 5 x 6144 > 30000 pixels
    assert too_many.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "30720 pixels in all, more than the limit of 30000" in json.loads(too_many.body)["error"]
    assert asyncio.run(scorer.score_batch([])).status_code == HTTPStatus.BAD_REQUEST


# --- The page app ---------------------------------------------------------------------------------

def test_page_app_shows_the_running_models_settings_examples_and_previews(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "examples.json").write_text(json.dumps([{"file": "clean.png", "title": "clean"}]))
    textured(5).save(examples / "clean.png")
    running = SimpleNamespace(settings=settings(tmp_path), decoder=ThreadPoolExecutor(1))
    asked = []
    app = webpage_app(lambda: asked.append(1) or running)
    assert not asked  # built before the service starts, asks for it only when called
    page = request(app, "GET", "/")
    assert page.status_code == 200 and '"model_version": "3"' in page.text
    assert '"examples": [{"file": "clean.png", "title": "clean"}]' in page.text
    assert request(app, "GET", "/examples/clean.png").headers["content-type"] == "image/png"
    assert request(app, "GET", "/examples/examples.json").status_code == 404
    preview = request(app, "POST", "/preview?name=a.png", content=PNG)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    broken = request(app, "POST", "/preview?name=cut.png", content=PNG[:300])
    assert broken.status_code == 400 and broken.json()["error"].startswith("cut.png: ")
    running.decoder.shutdown()


def test_page_app_serves_the_exported_model_and_runtime_under_its_security_policy(tmp_path):
    portable = tmp_path / "portable"
    portable.mkdir()
    (portable / "model.json").write_text(json.dumps({"format": 1, "padding": "x" * 5000}))
    (portable / "model.onnx").write_bytes(b"onnx" * 100)
    (portable / "model.tflite").write_bytes(b"tflite")
    running = SimpleNamespace(settings=settings(tmp_path))
    app = webpage_app(lambda: running)

    page = request(app, "GET", "/")
    config = json.loads(page.text.split('type="application/json">')[1].split("</script>")[0])
    if all((RUNTIME_DIR / file).is_file() for file in RUNTIME_FILES):  # `make node` has run
        assert config["on_device"]["unavailable"] is None
    assert config["on_device"]["type_numbers"]["no distortion"] == 0
    assert config["on_device"]["type_numbers"]["JPEG compression"] == 10
    # Script and style are files: the policy allows no inline code.
    assert '<script type="module" src="/webpage.js">' in page.text and "<style>" not in page.text
    for path, media_type in [("/webpage.js", "text/javascript"), ("/ondevice.js", "text/javascript"),
                             ("/webpage.css", "text/css"), ("/portable/model.onnx",
                                                            "application/octet-stream")]:
        response = request(app, "GET", path, headers={"accept-encoding": "identity"})
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
    for path in ("/portable/model.tflite", "/portable/examples.json", "/runtime/ort.all.min.mjs",
                 "/runtime/..%2Fpackage.json"):
        assert request(app, "GET", path).status_code == 404, path
    # Every answer carries the policy: only this origin, WebAssembly but no eval, no inline code.
    for path in ("/", "/webpage.js", "/portable/model.json", "/runtime/nothing"):
        headers = request(app, "GET", path).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # Sent gzipped where that saves, and revalidated by its ETag.
    packed = request(app, "GET", "/portable/model.json", headers={"accept-encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip" and packed.json()["format"] == 1
    again = request(app, "GET", "/portable/model.json", headers={"if-none-match": packed.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_the_page_says_why_it_cannot_score_on_the_device(tmp_path):
    reason = page_config(settings(tmp_path), examples=[])["on_device"]["unavailable"]
    assert reason.startswith("the served model was packaged without its exported form")
    portable = tmp_path / "portable"
    portable.mkdir()
    for file in ("model.json", "model.onnx"):
        (portable / file).write_text("{}")
    assert on_device_unavailable(portable, runtime_dir=tmp_path / "nothing").startswith(
        "the service was built without onnxruntime-web (run `make node`")
    with pytest.raises(NriqaError, match=r"missing ort.wasm.min.mjs, .*run `make node`"):
        check_runtime(tmp_path)


def test_the_bento_ships_the_pages_files_and_the_runtime():
    bentofile = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    spec = PathSpec.from_lines("gitignore", bentofile["include"])  # as BentoML matches them
    shipped = [f"nriqa/serving/{file}" for file in ("webpage.html", *ASSETS)]
    shipped += [(RUNTIME_PATH / file).as_posix() for file in RUNTIME_FILES]
    assert [path for path in shipped if not spec.match_file(path)] == []


@pytest.mark.integration  # starts a Python process
def test_decoding_threads_follow_the_cpus_this_process_may_use():
    """One CPU allowed (as a container's affinity gives it): one decoding thread, whatever the host has."""
    script = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
              "from nriqa.core.runtime import usable_cpus; print(usable_cpus())")
    assert run([sys.executable, "-c", script], cwd=PROJECT).stdout.strip() == "1"


def test_the_decoding_budget_makes_a_large_upload_wait_for_its_share():
    import asyncio

    from nriqa.serving.api import MemoryBudget

    async def scenario():
        budget, order = MemoryBudget(10), []

        async def holder(name, amount, seconds):
            async with budget.hold(amount):
                order.append(f"{name} in")
                await asyncio.sleep(seconds)
                order.append(f"{name} out")

        await asyncio.gather(holder("a", 6, 0.05), holder("b", 6, 0), holder("c", 4, 0))
        return order, budget.used

    order, used = asyncio.run(scenario())
    assert order.index("b in") > order.index("a out")  # 6 + 6 > 10: b waits for a
    assert order.index("c in") < order.index("a out")  # 6 + 4 fits beside a
    assert used == 0
