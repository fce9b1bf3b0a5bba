"""`conveyor sweep`: every object under an input path through one warm model, in shards.

A sweep lists the objects under the definition's input path, keeps those of its shard (a stable
hash of the key, modulo the number of shards), skips those whose result record already says
SUCCEEDED, and runs the rest through the handler loaded once, each as if it had been uploaded
alone: its own result record, its own outputs. The engines spread the shards: an AWS Batch array
job (`--submit batch`) or a Kubernetes Indexed Job (`--manifest kubernetes`).

    command.py   the click command (`conveyor sweep`)
    shards.py    which shard this process is (flags, then the engines' variables) and which keys are its
    listing.py   the shard's inputs: listed, selected, and those already SUCCEEDED set aside
    runner.py    the shard's run: downloads ahead, one input at a time with the model, uploads behind
    submit.py    the AWS Batch array job (named as the Lambda -> Batch hand-off names its job)
    manifest.py  the Kubernetes Indexed Job manifest
"""
