"""conveyor-broken: every prediction fails with a RuntimeError naming the input."""

import os

from conveyor_test_models import file_field


def get_metadata():
    return {"name": "conveyor-broken", "description": "Always fails.", "license": "Apache-2.0"}


def get_predict_args():
    return {"data": file_field("Any file.")}

def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def predict(**kwargs):
    upload = kwargs["data"]
    name = os.path.basename(upload.original_filename or upload.filename)
    raise RuntimeError(f"conveyor-broken cannot read {name}: out of cheese")


def predict_data(data):
    return predict(data=data["files"][0])


def predict_url(data):
    raise NotImplementedError("takes files, not URLs")  # deepaas-predict looks this up eagerly
