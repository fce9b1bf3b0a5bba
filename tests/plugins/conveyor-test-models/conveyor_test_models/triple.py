"""conveyor-triple: shaped like ai4os-hub's demo app (written for these tests): three required file
arguments (image, audio, video), an int with a range, a string with choices; reports what it got."""

import mimetypes

from webargs import fields, validate

from conveyor_test_models import describe, file_field

MEDIA = ("image", "audio", "video")


def get_metadata():
    return {"name": "conveyor-triple", "description": "Reports its three files.", "license": "Apache-2.0"}


def get_predict_args():
    args = {name: file_field("the " + name + " file") for name in MEDIA}
    args["intensity"] = fields.Int(load_default=50, validate=validate.Range(min=1, max=100))
    args["flavour"] = fields.Str(load_default="plain", validate=validate.OneOf(["plain", "spicy"]))
    return args


def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start


def predict(**kwargs):
    result = {"model": "conveyor-triple", "intensity": kwargs["intensity"], "flavour": kwargs["flavour"]}
    for name in MEDIA:
        upload = kwargs[name]  # a str here is the bug this model exists to catch
        facts = describe(upload, "conveyor-triple")
        del facts["model"]
        facts["content_type"] = upload.content_type or mimetypes.guess_type(facts["file_name"])[0]
        result[name] = facts
    return result
