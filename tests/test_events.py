"""Events: every shape of contract section 2, from fixtures under tests/events/, plus hostile input.

The fixtures are written from the documented AWS / MinIO / OSCAR / SCAR formats. Each test
asserts exact values, so a parser that drops a record, skips a decode or decodes twice fails.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import EventError
from conveyor.events import (
    Event,
    InlineInput,
    ObjectRef,
    load_event,
    parse_event,
    qualify_provider,
    refs_to_json,
)
from conveyor.media import sniff

EVENTS = Path(__file__).parent / "events"
FIXTURES = sorted(p.name for p in EVENTS.glob("*.json"))

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8ISfHwMDAxMDAwMDAAAANBAEIf62CUQAAAABJRU5ErkJggg=="
)


def fixture_bytes(name: str) -> bytes:
    return (EVENTS / name).read_bytes()


def fixture(name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(name))


def load(name: str) -> Event:
    return load_event(fixture_bytes(name))


def refs(name: str) -> list[ObjectRef]:
    inputs = load(name).inputs
    assert all(isinstance(i, ObjectRef) for i in inputs)
    return list(inputs)


def s3_event(*keys: str, bucket: str = "b", source: str = "aws:s3", **obj: Any) -> dict[str, Any]:
    return {
        "Records": [
            {"eventSource": source, "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}}} for key in keys
        ]
    }


def sqs(*bodies: Any) -> dict[str, Any]:
    return {
        "Records": [
            {"eventSource": "aws:sqs", "body": body if isinstance(body, str) else json.dumps(body)} for body in bodies
        ]
    }


def http_v2(body: str | None, *, b64: bool = False, content_type: str | None = None, **extra: Any) -> dict:
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "headers": {"content-type": content_type} if content_type else {},
        "requestContext": {"http": {"method": "POST" if body is not None else "GET", "path": "/"}},
        "isBase64Encoded": b64,
        **extra,
    }
    if body is not None:
        event["body"] = body
    return event


def assert_event_error(raw: Any, *fragments: str) -> EventError:
    with pytest.raises(EventError) as info:
        load_event(raw)
    message = str(info.value)
    assert "\n" not in message, "an EventError is one line"
    for fragment in fragments:
        assert fragment in message
    assert info.value.exit_code == 65
    return info.value


# -- S3 notifications -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "bucket", "key", "size", "etag", "version_id", "event_time", "user", "event_name"),
    [
        (
            0,
            "conveyor-inbox",
            "uploads/2024/cat.jpg",
            48213,
            "0f343b0931126a20f133d67c2b018a3b",
            "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
            "2024-05-02T09:14:27.512Z",
            "AWS:AIDAJDPLRKLG7UEXAMPLE",
            "ObjectCreated:Put",
        ),
        (
            1,
            "conveyor-inbox",
            "uploads/2024/dog.png",
            1024,
            "9b2cf535f27731c974343645a3985328-2",
            None,
            "2024-05-02T09:14:28.004Z",
            "AWS:AIDAJDPLRKLG7UEXAMPLE",
            "ObjectCreated:CompleteMultipartUpload",
        ),
        (
            2,
            "conveyor-archive",
            "batch/run-7/data.csv",
            0,
            "d41d8cd98f00b204e9800998ecf8427e",
            None,
            "2024-05-02T09:15:01.230Z",
            "AWS:AROAEXAMPLEROLE:batch-writer",
            "ObjectCreated:Copy",
        ),
    ],
)
def test_s3_every_record_is_parsed(index, bucket, key, size, etag, version_id, event_time, user, event_name):
    parsed = refs("s3_put_multi.json")
    assert len(parsed) == 3
    ref = parsed[index]
    assert (ref.bucket, ref.key, ref.size, ref.etag, ref.version_id) == (bucket, key, size, etag, version_id)
    assert (ref.event_time, ref.user, ref.event_name) == (event_time, user, event_name)
    assert (ref.source, ref.provider, ref.endpoint) == ("aws:s3", None, None)
    assert ref.record == fixture("s3_put_multi.json")["Records"][index]


def test_s3_event_kind_and_extras():
    event = load("s3_put_multi.json")
    assert event.kind == "storage"
    assert not event.wants_response
    assert (event.script, event.cmd_args, event.query, event.storage_provider) == (None, None, {}, None)
    assert event.raw == fixture("s3_put_multi.json")


@pytest.mark.parametrize(
    ("index", "key"),
    [
        (0, "reports/q1 summary.pdf"),  # '+' is a space
        (1, "nested/dir/file.txt"),  # %2F is a slash
        (2, "café photo.jpg"),  # UTF-8 percent-encoding
        (3, "c++ notes: v2.md"),  # %2B is a literal plus
        (4, "100% done.csv"),  # %25 decoded once, not twice
    ],
)
def test_s3_keys_are_decoded_once(index, key):
    assert refs("s3_encoded_keys.json")[index].key == key


def test_scar_synthetic_event_without_event_time():
    (ref,) = refs("s3_scar_synthetic.json")
    assert (ref.bucket, ref.key) == ("scar-in", "input/frame 001.jpg")
    assert (ref.size, ref.etag, ref.version_id, ref.event_time, ref.user, ref.event_name) == (None,) * 6


def test_s3_test_event_has_no_inputs():
    event = load("s3_test_event.json")
    assert (event.kind, event.inputs) == ("storage", ())


def test_s3_test_event_inside_sqs_has_no_inputs():
    event = load_event(sqs(fixture("s3_test_event.json")))
    assert (event.kind, event.inputs) == ("storage", ())


# -- MinIO and OSCAR ------------------------------------------------------------------------


def test_minio_event():
    (ref,) = refs("minio_put.json")
    assert (ref.bucket, ref.key, ref.size) == ("images", "input/my photo.jpg", 224662)
    assert (ref.etag, ref.event_time) == ("5fc7298143efe1276d39a3466d4e255f", "2024-06-11T16:40:05.871Z")
    assert (ref.user, ref.endpoint, ref.source) == ("alice", "http://minio-service.minio:9000", "minio:s3")
    assert (ref.provider, ref.version_id, ref.event_name) == (None, None, "s3:ObjectCreated:Put")


def test_minio_user_falls_back_to_user_identity():
    event = fixture("minio_put.json")
    del event["Records"][0]["requestParameters"]["principalId"]
    assert parse_event(event)[0].user == "AKIAMINIOALICE01"


def test_minio_empty_event_time_and_endpoint_are_none():
    event = fixture("minio_put.json")
    event["Records"][0]["eventTime"] = ""
    event["Records"][0]["responseElements"]["x-minio-origin-endpoint"] = ""
    ref = parse_event(event)[0]
    assert (ref.event_time, ref.endpoint) == (None, None)


@pytest.mark.parametrize(
    ("name", "provider", "storage_provider", "key", "source"),
    [
        ("oscar_delegated_string.json", "minio.default", "minio.default", "jobs/scan 17.tif", "minio:s3"),
        ("oscar_delegated_object.json", "minio.default", "default", "jobs/scan 17.tif", "minio:s3"),
        ("oscar_delegated_s3_bare.json", "s3.archive", "archive", "in/sample 1.wav", "aws:s3"),
    ],
)
def test_oscar_delegated_event(name, provider, storage_provider, key, source):
    event = load(name)
    assert (event.kind, event.storage_provider) == ("storage", storage_provider)
    (ref,) = event.inputs
    assert (ref.provider, ref.key, ref.source) == (provider, key, source)


def test_oscar_delegated_string_and_object_agree():
    as_string, as_object = refs("oscar_delegated_string.json"), refs("oscar_delegated_object.json")
    assert [r.to_dict() for r in as_string] == [r.to_dict() for r in as_object]
    assert as_string[0].user == "bob"
    assert as_string[0].endpoint == "https://minio.oscar.example.org"


@pytest.mark.parametrize(
    ("provider", "source", "expected"),
    [
        ("default", "minio:s3", "minio.default"),
        ("default", "aws:s3", "s3.default"),
        ("default", "aws.s3", "s3.default"),
        ("minio.default", "minio:s3", "minio.default"),
        ("s3.my-bucket", "minio:s3", "s3.my-bucket"),  # a typed value is kept as written
        ("default", "seaweedfs", "default"),  # unknown source: nothing to qualify with
    ],
)
def test_qualify_provider(provider, source, expected):
    assert qualify_provider(provider, source) == expected


# -- envelopes ------------------------------------------------------------------------------


def test_sqs_every_message_and_record():
    parsed = refs("sqs_s3.json")
    assert [(r.bucket, r.key, r.size) for r in parsed] == [
        ("queue-in", "a/one.jpg", 111),
        ("queue-in", "b/two 2.jpg", 222),
        ("queue-in", "b/three.jpg", 333),
    ]
    assert parsed[1].record == json.loads(fixture("sqs_s3.json")["Records"][1]["body"])["Records"][0]


def test_sns_envelope():
    (ref,) = refs("sns_s3.json")
    assert (ref.bucket, ref.key, ref.size) == ("topic-in", "clips/intro.mp4", 5242880)
    assert (ref.version_id, ref.user) == ("null-version-example", "AWS:AIDATOPIC")


def test_sns_inside_sqs():
    (ref,) = refs("sqs_sns_s3.json")
    assert (ref.bucket, ref.key, ref.etag) == ("fanout-in", "deep/nest/ed.txt", "55555555555555555555555555555555")


def test_sqs_with_raw_sns_record_and_delegated_bodies():
    delegated = fixture("oscar_delegated_object.json")
    sns_record = fixture("sns_s3.json")
    parsed = parse_event(sqs(delegated, sns_record))
    assert [(r.key, r.provider) for r in parsed] == [("jobs/scan 17.tif", "minio.default"), ("clips/intro.mp4", None)]


def test_eventbridge_key_is_taken_as_written():
    (ref,) = refs("eventbridge_s3_created.json")
    assert (ref.bucket, ref.key) == ("conveyor-events", "exports/Q1 report+final (v2).pdf")
    assert (ref.size, ref.etag, ref.version_id) == (
        5123,
        "b1946ac92492d2347c6235b4d2611184",
        "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
    )
    assert (ref.event_time, ref.user, ref.source, ref.event_name) == (
        "2024-08-20T14:31:09Z",
        "111122223333",
        "aws.s3",
        "Object Created",
    )
    assert ref.record == fixture("eventbridge_s3_created.json")


def test_eventbridge_inside_sqs():
    (ref,) = parse_event(sqs(fixture("eventbridge_s3_created.json")))
    assert ref.key == "exports/Q1 report+final (v2).pdf"


def test_envelopes_nest_a_few_levels():
    event: Any = s3_event("x%2By.txt")
    for _ in range(3):
        event = sqs(event)
    assert [r.key for r in parse_event(event)] == ["x+y.txt"]


def test_envelopes_nested_too_deep_are_refused():
    event: Any = s3_event("x.txt")
    for _ in range(12):
        event = sqs(event)
    assert_event_error(event, "nested more than")


# -- SCAR extras ----------------------------------------------------------------------------


def test_scar_script_and_cmd_args_without_input():
    event = load("scar_script_cmd_args.json")
    assert event.kind == "inline"
    assert event.inputs == ()
    assert event.script == b'#!/bin/bash\necho "processing $INPUT_FILE_PATH" >&2\nls -l "$TMP_OUTPUT_DIR"\n'
    assert event.cmd_args == ("--threshold", "0.5", "-v")


def test_scar_extras_beside_an_s3_event():
    event = load("scar_s3_with_extras.json")
    assert event.kind == "storage"
    assert event.script == b'#!/bin/sh\nexec python3 /opt/model/predict.py "$@"\n'
    assert event.cmd_args == ("--top", "5")
    assert [(r.bucket, r.key) for r in event.inputs] == [("scar-in", "batch/img 01.png")]


@pytest.mark.parametrize(
    ("cmd_args", "expected"),
    [
        (["a", "b c"], ("a", "b c")),
        ('["x", "--n", "3"]', ("x", "--n", "3")),
        ([1, 2.5, "z"], ("1", "2.5", "z")),
        ([], ()),
    ],
)
def test_cmd_args_forms(cmd_args, expected):
    assert load_event({"cmd_args": cmd_args}).cmd_args == expected


# -- API Gateway and Function URLs ----------------------------------------------------------


def test_apigw_v1_json_body_holding_a_minio_event():
    event = load("apigw_v1_minio_body.json")
    assert event.kind == "http"
    assert event.wants_response
    assert event.query == {"threshold": "0.8", "mode": "fast"}
    (ref,) = event.inputs
    assert (ref.bucket, ref.key, ref.size, ref.user) == ("gw-bucket", "posted/scan.jpg", 4096, "carol")
    assert (ref.source, ref.endpoint) == ("minio:s3", "http://10.0.0.5:9000")


def test_apigw_v2_base64_binary_body():
    event = load("apigw_v2_png_body.json")
    assert event.kind == "http"
    assert event.query == {"size": "small", "top": "3"}
    (inp,) = event.inputs
    assert isinstance(inp, InlineInput)
    assert inp.data == PNG
    assert (inp.file_name, inp.content_type, inp.size) == ("input.png", "image/png", 79)


def test_apigw_v1_scar_client_base64_text_body():
    event = load("apigw_v1_scar_base64_body.json")
    (inp,) = event.inputs
    assert inp.data == base64.b64decode(fixture("apigw_v1_scar_base64_body.json")["body"])
    assert inp.data[:3] == b"\xff\xd8\xff"
    assert (inp.file_name, inp.content_type) == ("input.jpg", "image/jpeg")
    assert event.query == {}


def test_function_url_plain_json_body_is_the_input():
    event = load("function_url_json_body.json")
    (inp,) = event.inputs
    assert inp.data == fixture("function_url_json_body.json")["body"].encode()
    assert (inp.file_name, inp.content_type) == ("input.json", "application/json")


@pytest.mark.parametrize(
    ("body", "b64", "content_type", "file_name", "data"),
    [
        ("a,b\n1,2\n", False, "text/csv", "input.csv", b"a,b\n1,2\n"),
        ("plain words here", False, "text/plain", "input.txt", b"plain words here"),
        (base64.b64encode(PNG).decode(), True, "application/octet-stream", "input.png", PNG),
        # binary media type: API Gateway base64-encodes the base64 text the SCAR client sent
        (base64.b64encode(base64.b64encode(PNG)).decode(), True, None, "input.png", PNG),
        (base64.b64encode(b"\x00\x01\x02\x03").decode(), True, "application/x-tar", "input.tar", b"\x00\x01\x02\x03"),
        (base64.b64encode(b"\x00\x01\x02\x03").decode(), True, "application/x-npy", "input.bin", b"\x00\x01\x02\x03"),
        ('{"x": [1, 2]}', False, None, "input.json", b'{"x": [1, 2]}'),
    ],
)
def test_http_body_becomes_inline_input(body, b64, content_type, file_name, data):
    (inp,) = load_event(http_v2(body, b64=b64, content_type=content_type)).inputs
    assert (inp.file_name, inp.data) == (file_name, data)


def test_http_without_body_keeps_the_query():
    event = load_event(http_v2(None, queryStringParameters={"n": "5", "flag": None}))
    assert (event.kind, event.inputs, event.query) == ("http", (), {"n": "5", "flag": ""})


def test_http_v1_body_with_delegated_event_names_the_provider():
    gateway = fixture("apigw_v1_minio_body.json")
    gateway["body"] = json.dumps(fixture("oscar_delegated_string.json"))
    event = load_event(gateway)
    assert event.storage_provider == "minio.default"
    assert [r.provider for r in event.inputs] == ["minio.default"]


# -- inline payloads ------------------------------------------------------------------------

RIFF = b"RIFF\x24\x00\x00\x00"
BMP = b"BM" + (70).to_bytes(4, "little") + b"\x00" * 4 + (54).to_bytes(4, "little") + (40).to_bytes(4, "little")


@pytest.mark.parametrize(
    ("payload", "file_name", "content_type"),
    [
        (PNG, "input.png", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "input.jpg", "image/jpeg"),
        (b"GIF89a\x01\x00\x01\x00\x80\x00", "input.gif", "image/gif"),
        (BMP + b"\x00" * 16, "input.bmp", "image/bmp"),
        (b"II*\x00\x08\x00\x00\x00", "input.tiff", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "input.tiff", "image/tiff"),
        (RIFF + b"WEBPVP8 \x00", "input.webp", "image/webp"),
        (RIFF + b"WAVEfmt \x10\x00", "input.wav", "audio/wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "input.mp3", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\x00\x00", "input.mp3", "audio/mpeg"),
        (b"fLaC\x00\x00\x00\x22", "input.flac", "audio/flac"),
        (b"OggS\x00\x02\x00\x00", "input.ogg", "audio/ogg"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "input.mp4", "video/mp4"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "input.heic", "image/heic"),
        (b"PK\x03\x04\x14\x00\x00\x00", "input.zip", "application/zip"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "input.gz", "application/gzip"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "input.pdf", "application/pdf"),
        (b'{"instances": [[1, 2, 3]]}', "input.json", "application/json"),
        (b"[1, 2, 3]", "input.json", "application/json"),
        ("línea de texto\n".encode(), "input.txt", "text/plain"),
        (b"BMW is a car, not a bitmap", "input.txt", "text/plain"),
        (b"42", "input.txt", "text/plain"),  # a JSON scalar is text, not base64
        (b"\x00\x01\x02\xfe\xff", "input.bin", "application/octet-stream"),
        (b"text with a \x00 NUL", "input.bin", "application/octet-stream"),
    ],
)
def test_inline_file_name_from_magic_bytes(payload, file_name, content_type):
    event = load_event(payload)
    (inp,) = event.inputs
    assert event.kind == "inline"
    assert (inp.file_name, inp.content_type, inp.data) == (file_name, content_type, payload)


@pytest.mark.parametrize("wrap", [None, 76])
def test_oscar_sync_base64_text_is_decoded(wrap):
    text = base64.b64encode(PNG).decode()
    if wrap:
        text = "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap)) + "\n"
    event = load_event(text.encode())
    (inp,) = event.inputs
    assert (inp.data, inp.file_name) == (PNG, "input.png")
    assert event.raw == text.encode()


def test_base64_of_text_is_decoded_to_text():
    (inp,) = parse_event(base64.b64encode(b"hello, model\n"))
    assert (inp.data, inp.file_name) == (b"hello, model\n", "input.txt")


def test_unknown_json_object_is_the_input_unchanged():
    payload = b'{"prompt": "a cat", "steps": 20}'
    event = load_event(payload)
    (inp,) = event.inputs
    assert (event.kind, inp.data, inp.file_name) == ("inline", payload, "input.json")
    assert event.raw == {"prompt": "a cat", "steps": 20}


def test_unknown_json_dict_from_lambda_is_serialized():
    event = load_event({"prompt": "café"})
    (inp,) = event.inputs
    assert json.loads(inp.data) == {"prompt": "café"}
    assert inp.file_name == "input.json"


@pytest.mark.parametrize("payload", [b"", b"  \n", "", "{}", {}])
def test_empty_payloads_have_no_input(payload):
    event = load_event(payload)
    assert (event.kind, event.inputs) == ("inline", ())


def test_list_of_storage_events_is_a_batch():
    batch = [fixture("s3_put_multi.json"), fixture("oscar_delegated_string.json"), fixture("s3_test_event.json")]
    event = load_event(json.dumps(batch))
    assert event.kind == "storage"
    assert [r.key for r in event.inputs] == [
        "uploads/2024/cat.jpg",
        "uploads/2024/dog.png",
        "batch/run-7/data.csv",
        "jobs/scan 17.tif",
    ]
    assert event.storage_provider == "minio.default"


@pytest.mark.parametrize("payload", [[], [1, 2], [fixture("s3_put_multi.json"), {"not": "an event"}]])
def test_other_lists_are_inline_json(payload):
    event = load_event(payload)
    (inp,) = event.inputs
    assert (event.kind, inp.file_name, json.loads(inp.data)) == ("inline", "input.json", payload)


def test_same_event_as_bytes_str_and_dict():
    for name in FIXTURES:
        text = fixture_bytes(name).decode()
        as_bytes, as_str, as_dict = load_event(text.encode()), load_event(text), load_event(json.loads(text))
        assert refs_to_json(as_bytes.inputs) == refs_to_json(as_str.inputs) == refs_to_json(as_dict.inputs), name
        assert as_bytes.kind == as_str.kind == as_dict.kind, name


# -- refs_to_json ---------------------------------------------------------------------------


def test_refs_to_json_for_storage_refs():
    out = refs_to_json(load("s3_scar_synthetic.json").inputs)
    assert out == [
        {
            "bucket": "scar-in",
            "key": "input/frame 001.jpg",
            "size": None,
            "etag": None,
            "version_id": None,
            "event_time": None,
            "user": None,
            "provider": None,
            "source": "aws:s3",
            "endpoint": None,
            "event_name": None,
            "inline": False,
        }
    ]


def test_refs_to_json_for_inline_input():
    assert refs_to_json(load("apigw_v2_png_body.json").inputs) == [
        {"inline": True, "file_name": "input.png", "size": 79, "content_type": "image/png"}
    ]


@pytest.mark.parametrize("name", FIXTURES)
def test_refs_to_json_is_serializable_for_every_fixture(name):
    out = refs_to_json(load(name).inputs)
    assert json.loads(json.dumps(out)) == out
    assert all({"inline", "size"} <= set(item) for item in out)


# -- hostile input --------------------------------------------------------------------------

DEPTH = 100_000


@pytest.mark.parametrize(
    "payload",
    [
        "[" * DEPTH + "]" * DEPTH,
        ('{"a":' * DEPTH + "1" + "}" * DEPTH).encode(),
        b"[" * DEPTH,  # unclosed, too
        sqs("[" * DEPTH + "]" * DEPTH),
        {"storage_provider": "minio.default", "event": "[" * DEPTH + "]" * DEPTH},
        http_v2("[" * DEPTH + "]" * DEPTH),
    ],
    ids=["list", "object", "unclosed", "sqs-body", "delegated-event", "http-body"],
)
def test_deeply_nested_json_is_refused(payload):
    assert_event_error(payload, "nested too deeply")


def test_deeply_nested_dict_from_lambda_is_refused():
    nested: dict[str, Any] = {}
    for _ in range(DEPTH):
        nested = {"a": nested}
    assert_event_error(nested, "cannot be serialized")


def test_ten_megabyte_event_is_parsed():
    event = s3_event("big/one.bin", size=10 * 1024 * 1024)
    event["padding"] = "x" * (10 * 1024 * 1024)
    payload = json.dumps(event).encode()
    assert len(payload) > 10 * 1024 * 1024
    (ref,) = parse_event(payload)
    assert (ref.key, ref.size) == ("big/one.bin", 10 * 1024 * 1024)


def test_ten_megabytes_of_records_are_all_parsed():
    keys = [f"k/{i:06d}-{'x' * 100}.jpg" for i in range(45_000)]
    payload = json.dumps(s3_event(*keys, size=1, eTag="e" * 32, versionId="v" * 20)).encode()
    assert len(payload) > 10 * 1024 * 1024
    parsed = parse_event(payload)
    assert [r.key for r in parsed] == keys


def test_ten_megabyte_binary_payload_is_inline():
    payload = b"\x80" + os.urandom(10 * 1024 * 1024)
    (inp,) = parse_event(payload)
    assert (inp.size, inp.file_name) == (len(payload), "input.bin")


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe\xfd", b"\x80{", "lone surrogate \ud800"],
)
def test_non_utf8_payload_is_inline(payload):
    # Bytes that start like JSON ({\x80\x81}, {"Records": [\xff]}) are malformed events: see below.
    event = load_event(payload)
    (inp,) = event.inputs
    assert (event.kind, inp.file_name) == ("inline", "input.bin")


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"),
        ("%2Fetc%2Fpasswd", "/etc/passwd"),
        ("/etc/passwd", "/etc/passwd"),
        ("a/../../b", "a/../../b"),
        ("..", ".."),
        ("new%0Aline", "new\nline"),
    ],
)
def test_path_like_keys_parse_faithfully(encoded, key):
    assert parse_event(s3_event(encoded))[0].key == key


def test_path_like_keys_parse_faithfully_in_eventbridge():
    event = fixture("eventbridge_s3_created.json")
    event["detail"]["object"]["key"] = "../../etc/passwd"
    assert parse_event(event)[0].key == "../../etc/passwd"


def with_object(**obj: Any) -> dict:
    return {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": obj}}]}


def minus(name: str, *path: str | int) -> dict:
    event = fixture(name)
    node = event
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return event


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        (with_object(key="a%00b"), ["Records[0]", "s3.object.key", "NUL"]),
        (with_object(key="a\x00b"), ["Records[0]", "NUL"]),
        (with_object(key=""), ["Records[0]: s3.object.key is empty"]),
        (with_object(key="%FF%FE"), ["not valid URL-encoded UTF-8"]),
        (with_object(key=17), ["s3.object.key is not a string"]),
        (with_object(key="k", size="abc"), ["s3.object.size", "'abc'"]),
        (with_object(key="k", size=-1), ["s3.object.size"]),
        (with_object(key="k", size=True), ["s3.object.size"]),
        (with_object(key="k", size=1.5), ["s3.object.size"]),
        (with_object(key="k", size="9" * 40), ["s3.object.size"]),
        (with_object(key="k", size={"bytes": 3}), ["s3.object.size"]),
        (with_object(key="k", eTag=["x"]), ["s3.object.eTag is not a string"]),
        (minus("s3_put_multi.json", "Records", 1, "s3", "object", "key"), ["Records[1]: missing s3.object.key"]),
        (minus("s3_put_multi.json", "Records", 2, "s3", "bucket", "name"), ["Records[2]: missing s3.bucket.name"]),
        (minus("s3_put_multi.json", "Records", 0, "s3"), ["Records[0]: missing s3"]),
        (minus("s3_put_multi.json", "Records", 0, "eventSource"), ["Records[0]: missing eventSource"]),
        (minus("minio_put.json", "Records", 0, "s3", "object", "key"), ["Records[0]: missing s3.object.key"]),
        (minus("eventbridge_s3_created.json", "detail", "object", "key"), ["missing detail.object.key"]),
        (minus("eventbridge_s3_created.json", "detail", "bucket"), ["missing detail.bucket.name"]),
        (s3_event("k", bucket=""), ["s3.bucket.name is empty"]),
        (s3_event("k", bucket="a/b"), ["not a bucket name"]),
        (s3_event("k", bucket="a\x00b"), ["not a bucket name"]),
        ({"Records": "nope"}, ["Records: not a list"]),
        ({"Records": []}, ["Records: empty"]),
        ({"Records": ["x"]}, ["Records[0]: record is not an object"]),
        ({"Records": [{"eventSource": "aws:kinesis"}]}, ["unsupported eventSource 'aws:kinesis'"]),
        (sqs("not json"), ["Records[0].body: not valid JSON"]),
        (sqs({"hello": "world"}), ["Records[0].body: does not hold a storage event"]),
        (sqs(s3_event("ok.txt"), with_object(key="")), ["Records[1].body.Records[0]: s3.object.key is empty"]),
        ({"Records": [{"eventSource": "aws:sqs"}]}, ["Records[0]: missing body"]),
        ({"Records": [{"EventSource": "aws:sns", "Sns": {}}]}, ["Records[0]: missing Sns.Message"]),
        ({"storage_provider": "", "event": s3_event("k")}, ["storage_provider must be a non-empty string"]),
        ({"storage_provider": 3, "event": s3_event("k")}, ["storage_provider"]),
        ({"storage_provider": "minio.default", "event": "{}"}, ["event: does not hold a storage event"]),
        ({"storage_provider": "minio.default", "event": "<xml/>"}, ["event: not valid JSON"]),
        ({"script": "***not base64***"}, ["'script' is not valid base64"]),
        ({"script": 12}, ["'script'"]),
        ({"cmd_args": "--fast"}, ["'cmd_args' is not a JSON list"]),
        ({"cmd_args": {"a": 1}}, ["'cmd_args' is not a list"]),
        ({"cmd_args": ["ok", {"a": 1}]}, ["'cmd_args'[1]"]),
        ({"cmd_args": ["a\x00b"]}, ["'cmd_args'[0] contains a NUL"]),
        (http_v2("***", b64=True), ["body (isBase64Encoded) is not valid base64"]),
        (http_v2("x", queryStringParameters=["a"]), ["queryStringParameters"]),
        ({**http_v2(None), "body": 12}, ["body is not a string"]),
        (http_v2(json.dumps(with_object(key=""))), ["body.Records[0]: s3.object.key is empty"]),
        (42, ["unsupported event type int"]),
        (None, ["unsupported event type NoneType"]),
    ],
)
def test_malformed_events_raise_event_error(payload, fragments):
    assert_event_error(payload, *fragments)


def test_event_error_names_the_record():
    error = assert_event_error(minus("s3_put_multi.json", "Records", 1, "s3", "object", "key"))
    assert error.context == {"where": "Records[1]"}


JUNK: list[Any] = [None, 0, -5, "", "x", "%00", [], {}, ["x"], {"k": "v"}, True, 1.5]


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            found += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += paths(v, (*prefix, i))
    return found


@pytest.mark.parametrize("name", FIXTURES)
def test_any_field_replaced_by_junk_parses_or_raises_event_error(name):
    original = fixture(name)
    tried = 0
    for path in paths(original):
        for junk in JUNK:
            event = copy.deepcopy(original)
            node = event
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = junk
            try:
                load_event(event)
            except EventError as exc:
                assert "\n" not in str(exc)
            tried += 1
    assert tried >= len(JUNK)


@pytest.mark.parametrize(
    ("head", "expected"),
    [  # every signature the DEEPaaS handler's own sniffer knew (TIFF as .tiff), and what events.py knew
        (b"\x89PNG\r\n\x1a\n\x00\x00", (".png", "image/png")),
        (b"\xff\xd8\xff\xe0", (".jpg", "image/jpeg")),
        (b"GIF87a", (".gif", "image/gif")),
        (b"GIF89a", (".gif", "image/gif")),
        (b"PK\x03\x04", (".zip", "application/zip")),
        (b"PK\x05\x06", (".zip", "application/zip")),
        (b"%PDF-1.4", (".pdf", "application/pdf")),
        (b"\x1f\x8b\x08", (".gz", "application/gzip")),
        (b"II*\x00", (".tiff", "image/tiff")),
        (b"MM\x00*", (".tiff", "image/tiff")),
        (b"OggS\x00", (".ogg", "audio/ogg")),
        (b"fLaC\x00", (".flac", "audio/flac")),
        (b"ID3\x03", (".mp3", "audio/mpeg")),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", (".wav", "audio/wav")),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", (".webp", "image/webp")),
        (b"\x00\x00\x00\x18ftypmp42", (".mp4", "video/mp4")),
        (b"\x00\x00\x00\x18ftypheic", (".heic", "image/heic")),
        (b"\x00\x00\x00\x1cftypavif", (".avif", "image/avif")),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little"), (".bmp", "image/bmp")),
        (b"", None),
        (b'{"a": 1}', None),  # text is the caller's to judge
    ],
)
def test_one_content_sniffer(head, expected):
    assert sniff(head) == expected


# -- shapes OSCAR added since faas-supervisor 1.5.8: dCache, Rucio, OneTrigger ----------------------


def definition(text: str):
    from conveyor.config import load_config

    return load_config({}, "local", path="/f.yaml", read_file=lambda path: text, secrets_dir=None)


DCACHE_DEFINITION = """
input:
  - {storage_provider: webdav.dcache, path: dcache-in/watched}
storage_providers:
  webdav:
    dcache: {hostname: dcache.example.org:2880, login: u, password: p}
"""


def test_dcache_event_names_a_file_of_the_watched_folder():
    event = load("dcache_inotify.json")
    (ref,) = event.inputs
    assert event.kind == "storage"
    assert (ref.bucket, ref.key, ref.source, ref.event_name, ref.provider) == (
        "",
        "sample 0042.tif",
        "dcache",
        "IN_CLOSE_WRITE",
        None,
    )
    assert ref.record == fixture("dcache_inotify.json")
    out = refs_to_json(event.inputs)[0]
    assert (out["bucket"], out["key"], out["provider_type"]) == (None, "sample 0042.tif", "webdav")


def test_dcache_event_is_bound_to_the_webdav_dcache_input():
    from conveyor.events import bind_inputs

    (ref,) = bind_inputs(load("dcache_inotify.json"), definition(DCACHE_DEFINITION)).inputs
    assert (ref.provider, ref.bucket, ref.key) == ("webdav.dcache", "dcache-in", "watched/sample 0042.tif")
    plain = load("s3_put_multi.json")
    assert bind_inputs(plain, definition(DCACHE_DEFINITION)).inputs == plain.inputs


def test_dcache_event_with_the_only_webdav_input_or_a_named_provider():
    from conveyor.events import bind_inputs

    other = DCACHE_DEFINITION.replace("webdav.dcache", "webdav.desy").replace("    dcache:", "    desy:")
    (ref,) = bind_inputs(load("dcache_inotify.json"), definition(other)).inputs
    assert (ref.provider, ref.bucket, ref.key) == ("webdav.desy", "dcache-in", "watched/sample 0042.tif")
    wrapped = {"storage_provider": "desy", "event": fixture_bytes("dcache_inotify.json").decode()}
    (ref,) = load_event(wrapped).inputs
    assert ref.provider == "webdav.desy"  # a bare id is typed by the event's source
    assert bind_inputs(load_event(wrapped), definition(other)).inputs[0].key == "watched/sample 0042.tif"


def test_dcache_event_without_its_input_is_a_config_error():
    from conveyor.errors import ConfigError
    from conveyor.events import bind_inputs

    with pytest.raises(ConfigError) as info:
        bind_inputs(load("dcache_inotify.json"), definition("input: []\n"))
    assert info.value.exit_code == 78
    assert "webdav.dcache" in info.value.message and "sample 0042.tif" in info.value.message


@pytest.mark.parametrize("mask", [["IN_CREATE", "IN_ISDIR"], ["IN_DELETE"], ["IN_MOVED_FROM"], ["IN_DELETE_SELF"]])
def test_dcache_folder_and_removal_events_name_no_file(mask):
    event = fixture("dcache_inotify.json")
    event["event"]["mask"] = mask
    loaded = load_event(event)
    assert (loaded.kind, loaded.inputs) == ("storage", ())


@pytest.mark.parametrize(
    ("inner", "fragment"),
    [
        ("not an object", "event is not an object"),
        ({"mask": ["IN_CLOSE_WRITE"]}, "missing event.name"),
        ({"name": "../up.txt", "mask": ["IN_CLOSE_WRITE"]}, "not a file name"),
        ({"name": "a.txt", "mask": "IN_CLOSE_WRITE"}, "not a list of inotify flags"),
    ],
)
def test_dcache_malformed(inner, fragment):
    assert_event_error({"event": inner, "subscription": "https://d/x"}, fragment)


def test_rucio_close_event_names_the_did():
    event = load("rucio_close.json")
    (ref,) = event.inputs
    assert event.kind == "storage"
    assert (ref.bucket, ref.key, ref.source, ref.event_name, ref.event_time) == (
        "user.fishwatch",
        "sonar-run-2026-05-04",
        "rucio",
        "close",
        "2026-05-04 10:22:31.402117",
    )
    assert refs_to_json(event.inputs)[0]["provider_type"] == "rucio"


def test_rucio_records_event_with_the_payload_in_the_record_or_at_the_top():
    (ref,) = refs("rucio_records.json")
    assert (ref.bucket, ref.key, ref.source, ref.event_time) == (
        "user.fishwatch",
        "sonar-run-2026-05-05",
        "rucio",
        "2026-05-04T10:22:31Z",
    )
    top = {"payload": {"scope": "s", "name": "n"}, "Records": [{"eventSource": "rucio"}]}  # faas-supervisor's reading
    (ref,) = parse_event(top)
    assert (ref.bucket, ref.key) == ("s", "n")
    assert_event_error({"Records": [{"eventSource": "rucio"}]}, "Records[0]: missing payload")


def test_rucio_event_provider_is_rucio_rucio_or_the_definitions_input():
    from conveyor.events import bind_inputs

    (ref,) = bind_inputs(load("rucio_close.json"), definition("input: []\n")).inputs
    assert ref.provider == "rucio.rucio"
    text = "input: [{storage_provider: rucio.desy, path: rucio/input}]\nstorage_providers: {rucio: {desy: {host: h}}}\n"
    (ref,) = bind_inputs(load("rucio_close.json"), definition(text)).inputs
    assert ref.provider == "rucio.desy"


def test_onetrigger_event_names_a_file_in_a_space():
    event = load("onetrigger_put.json")
    (ref,) = event.inputs
    assert (ref.space, ref.bucket, ref.key, ref.event_time, ref.source) == (
        "plants space",
        "incoming",
        "leaf 07.jpg",
        "2026-03-18T14:05:09.381220",
        "OneTrigger",
    )
    assert ref.storage_object_key == "/plants space/incoming/leaf 07.jpg"  # the Key, as faas-supervisor sets it
    out = refs_to_json(event.inputs)[0]
    assert (out["provider_type"], out["space"]) == ("onedata", "plants space")


ONEDATA_DEFINITION = """
input:
  - {storage_provider: onedata.other, path: x/in}
  - {storage_provider: onedata.egi, path: incoming}
storage_providers:
  onedata:
    other: {oneprovider_host: op.example.org, token: t1, space: other space}
    egi: {oneprovider_host: op.example.org, token: t2, space: plants space}
"""


def test_onetrigger_provider_is_the_one_whose_space_the_key_names():
    from conveyor.errors import ConfigError
    from conveyor.events import bind_inputs

    (ref,) = bind_inputs(load("onetrigger_put.json"), definition(ONEDATA_DEFINITION)).inputs
    assert (ref.provider, ref.bucket, ref.key) == ("onedata.egi", "incoming", "leaf 07.jpg")
    with pytest.raises(ConfigError) as info:
        bind_inputs(load("onetrigger_put.json"), definition(ONEDATA_DEFINITION.replace("plants space", "p2")))
    assert "plants space" in info.value.message and info.value.exit_code == 78


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("/plants space/leaf.jpg", "names no file inside a folder of the space"),
        ("/plants space/../etc/leaf.jpg", "not a path in a Onedata space"),
        (None, "missing Key"),
    ],
)
def test_onetrigger_malformed(key, fragment):
    event = fixture("onetrigger_put.json")
    event["Key"] = key
    assert_event_error(event, fragment)


def test_onetrigger_names_one_file():
    event = fixture("onetrigger_put.json")
    event["Records"].append(dict(event["Records"][0]))
    assert_event_error(event, "a OneTrigger event names one file")


# -- EVENT of a delegated event: the inner event ---------------------------------------------------


def test_inner_event_of_an_oscar_delegation_wrapper():
    inner = json.loads(fixture("oscar_delegated_string.json")["event"])
    assert load("oscar_delegated_string.json").inner_event == inner
    assert load("oscar_delegated_object.json").inner_event == fixture("oscar_delegated_object.json")["event"]
    assert load("minio_put.json").inner_event is None
    assert load("apigw_v1_minio_body.json").inner_event is None


def test_event_variable_of_a_delegated_event_is_the_inner_event_as_faas_supervisor_gives_it():
    from conveyor.process import _event_json

    event = load("oscar_delegated_string.json")
    inner = json.loads(fixture("oscar_delegated_string.json")["event"])
    text = _event_json(event, event.inputs[0])
    assert text == json.dumps(inner)  # faas-supervisor: json.dumps of the parsed inner event
    assert json.loads(text)["Records"][0]["eventTime"] == "2024-06-12T08:02:11.004Z"
    plain = load("minio_put.json")
    assert json.loads(_event_json(plain, plain.inputs[0])) == fixture("minio_put.json")


def test_event_variable_of_a_huge_delegated_event_falls_back_to_its_record():
    from conveyor.config.model import MAX_ARG_STRLEN
    from conveyor.process import _event_json

    inner = json.loads(fixture("oscar_delegated_string.json")["event"])
    inner["padding"] = "x" * MAX_ARG_STRLEN  # too large for one environment string
    event = load_event({"storage_provider": "minio.default", "event": json.dumps(inner)})
    text = _event_json(event, event.inputs[0])
    assert text is not None and json.loads(text) == {"Records": [inner["Records"][0]]}


# -- malformed events (issue 14, item 4) ----------------------------------------------------

_S3_TEXT = json.dumps(
    {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/x.bin"}}}]}
).encode()


@pytest.mark.parametrize(
    "payload",
    [
        _S3_TEXT[:-7],  # truncated
        _S3_TEXT.replace(b"in/x.bin", b"in/x\xff.bin"),  # a stray invalid UTF-8 byte
        b"\xef\xbb\xbf  " + _S3_TEXT[:40],  # BOM and blanks first
        b'[{"Records": [',
        b"{not json at all",
        b"{\x80\x81}",
        b'{"Records": [\xff]}',
    ],
)
def test_malformed_json_event_is_refused(payload):
    with pytest.raises(EventError, match="malformed"):
        load_event(payload)


@pytest.mark.parametrize(
    "payload",
    [PNG, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", base64.b64encode(_S3_TEXT[:-7]), b"plain text {not json}", _S3_TEXT],
)
def test_inline_payloads_that_are_not_malformed_json_still_work(payload):
    event = load_event(payload)
    assert event.kind in ("inline", "storage") and event.inputs


# -- issue 14, item 6: only objects under the definition's inputs ------------------------------------

WITHIN_CASES = [
    # (event file, the definition's input entries, within?) - one record each, its provider as resolved
    ("minio_put.json", "[{storage_provider: minio.default, path: images/input}]", True),
    ("minio_put.json", "[{storage_provider: minio.default, path: images}]", True),
    ("minio_put.json", "[{storage_provider: minio.default, path: images/inp}]", False),  # not a folder of it
    ("minio_put.json", "[{storage_provider: minio.default, path: other/input}]", False),
    ("minio_put.json", "[{storage_provider: s3.default, path: images/input}]", False),  # the same path elsewhere
    ("minio_put.json", "[]", False),  # a service without inputs (a sync service) fetches nothing
    ("oscar_delegated_string.json", "[{storage_provider: minio.default, path: oscar-in/jobs}]", True),
    ("oscar_delegated_string.json", "[{storage_provider: minio.cluster2, path: oscar-in/jobs}]", False),
    ("oscar_delegated_s3_bare.json", "[{storage_provider: s3.archive, path: /in-bucket/in/}]", None),
    ("eventbridge_s3_created.json", "[{storage_provider: s3, path: conveyor-events/exports}]", True),
    ("apigw_v1_minio_body.json", "[{storage_provider: minio.default, path: gw-bucket/posted}]", True),
    ("apigw_v1_minio_body.json", "[{storage_provider: minio.default, path: gw-bucket/in}]", False),
]


def within(ref, text: str) -> bool:
    from conveyor.errors import OutsideInputsError
    from conveyor.events import check_within_inputs
    from conveyor.process import input_provider

    config = definition(text)
    try:
        check_within_inputs(ref, str(input_provider(ref)), config)
        return True
    except OutsideInputsError as exc:
        assert exc.exit_code == 65 and exc.kind == "outside_inputs"
        assert "conveyor.accept_any_input: true" in exc.message and f"{ref.bucket}/{ref.key}" in exc.message
        return False


@pytest.mark.parametrize(("name", "inputs", "expected"), WITHIN_CASES)
def test_only_objects_under_an_input_path_of_their_provider_are_within(name, inputs, expected):
    (ref,) = refs(name)
    if expected is None:  # a path written with slashes around it: the bucket and prefix as in_bucket/in
        inputs = inputs.replace("/in-bucket/in/", f"/{ref.bucket}/{ref.key.split('/')[0]}/")
        expected = True
    providers = "storage_providers: {minio: {cluster2: {endpoint: 'http://m:9000', access_key: a, secret_key: b}}, " \
        "s3: {archive: {region: eu-west-1}}}\n"
    assert within(ref, f"input: {inputs}\n{providers}") is expected
    assert within(ref, f"input: {inputs}\n{providers}conveyor: {{accept_any_input: true}}\n") is True


def test_each_record_of_an_event_is_judged_by_itself():
    a, b, c = refs("s3_put_multi.json")  # conveyor-inbox/uploads/2024/..., then conveyor-archive/batch/...
    text = "input: [{storage_provider: s3, path: conveyor-inbox/uploads}]\n"
    assert [within(ref, text) for ref in (a, b, c)] == [True, True, False]


def test_a_key_climbing_out_of_the_input_folder_is_outside():
    from dataclasses import replace

    (ref,) = refs("minio_put.json")
    text = "input: [{storage_provider: minio.default, path: images/input}]\n"
    assert within(replace(ref, key="input/../private/payroll.csv"), text) is False
    assert within(replace(ref, key="input/ok/payroll.csv"), text) is True


def test_user_isolation_accepts_the_users_buckets_under_the_input_folder():
    (ref,) = refs("minio_put.json")  # images/input/my photo.jpg
    text = (
        "input: [{storage_provider: minio.default, path: service/input}]\n"
        "isolation_level: USER\nbucket_list: [images]\n"
    )
    assert within(ref, text) is True
    assert within(ref, text.replace("USER", "SERVICE")) is False


def test_dcache_and_rucio_refs_are_the_definitions_by_binding():
    from conveyor.events import bind_inputs

    (ref,) = bind_inputs(load("dcache_inotify.json"), definition(DCACHE_DEFINITION)).inputs
    assert within(ref, DCACHE_DEFINITION) is True
    text = "input: [{storage_provider: rucio.desy, path: rucio/input}]\nstorage_providers: {rucio: {desy: {host: h}}}\n"
    (ref,) = bind_inputs(load("rucio_close.json"), definition(text)).inputs
    assert within(ref, text) is True
    assert within(ref, text.replace("rucio.desy, path", "minio.default, path")) is False


def test_accept_any_input_is_a_boolean_setting():
    from conveyor.errors import ConfigError

    assert definition("conveyor: {accept_any_input: true}\n").conveyor.accept_any_input is True
    assert definition("name: f\n").conveyor.accept_any_input is False
    assert definition("name: f\n").conveyor.redacted()["accept_any_input"] is False
    with pytest.raises(ConfigError) as info:
        definition("conveyor: {accept_any_input: sometimes}\n")
    assert info.value.exit_code == 78 and "conveyor.accept_any_input" in info.value.message
