"""conveyor-sleeper: takes `seconds` (default 30) to answer; a stand-in for a hung model."""

import time

from webargs import fields

from conveyor_test_models import describe, file_field


def get_metadata():
    return {"name": "conveyor-sleeper", "description": "Sleeps, then answers.", "license": "Apache-2.0"}


def get_predict_args():
    return {"data": file_field("Any file."), "seconds": fields.Float(load_default=30.0)}

def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def predict(**kwargs):
    time.sleep(kwargs["seconds"])
    result = describe(kwargs["data"], "conveyor-sleeper")
    result["slept"] = kwargs["seconds"]
    return result


def predict_data(data):
    return predict(data=data["files"][0], seconds=30.0)


def predict_url(data):
    raise NotImplementedError("takes files, not URLs")  # deepaas-predict looks this up eagerly
