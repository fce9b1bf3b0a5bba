"""conveyor-echo: returns its input's facts and its own arguments, as a dict."""

from webargs import fields

from conveyor_test_models import describe, file_field

WARM_CALLS = 0


def get_metadata():
    return {"name": "conveyor-echo", "description": "Echoes its arguments.", "license": "Apache-2.0"}


def warm():
    global WARM_CALLS
    WARM_CALLS += 1


def get_predict_args():
    return {
        "audio": file_field("A file; its name says nothing about its type."),
        "greeting": fields.Str(load_default="hello"),
        "repeat": fields.Int(load_default=1),
        "tags": fields.List(fields.Str(), load_default=[]),
    }

def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def predict(**kwargs):
    result = describe(kwargs["audio"], "conveyor-echo")
    result.update(greeting=kwargs["greeting"], repeat=kwargs["repeat"], tags=list(kwargs["tags"]))
    return result


def predict_data(data):
    return predict(audio=data["files"][0], greeting="hello", repeat=1, tags=[])


def predict_url(data):
    raise NotImplementedError("takes files, not URLs")  # deepaas-predict looks this up eagerly
