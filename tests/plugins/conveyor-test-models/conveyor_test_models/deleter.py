"""conveyor-deleter: deletes the file it was given after reading it, as catalog models do."""

import os

from conveyor_test_models import describe, file_field


def get_metadata():
    return {"name": "conveyor-deleter", "description": "Removes its input.", "license": "Apache-2.0"}


def get_predict_args():
    return {"data": file_field("Any file; it is deleted.")}

def get_train_args():
    return {}  # deepaas-cli 2.6.0 calls this on every start, even to predict


def predict(**kwargs):
    upload = kwargs["data"]
    result = describe(upload, "conveyor-deleter")
    os.remove(upload.filename)
    result["deleted"] = upload.filename
    return result


def predict_data(data):
    return predict(data=data["files"][0])


def predict_url(data):
    raise NotImplementedError("takes files, not URLs")  # deepaas-predict looks this up eagerly
