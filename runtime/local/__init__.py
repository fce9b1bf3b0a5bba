"""`conveyor local`: the event-driven loop of the platforms, on one machine.

An embedded S3 server (SeaweedFS `weed server`) whose filer notifies Conveyor of every upload; each
notification becomes the MinIO event OSCAR would deliver and is processed the way the chosen
platform runs a job (a fresh process per event, or a warm Lambda environment), with a drop folder
for files, a progress line per file and a summary at the end.

    command.py     the click command (`conveyor local`)
    runner.py      the loop: start-up, queue and workers, results and records, shutdown
    webhook.py     SeaweedFS filer event -> MinIO / OSCAR event, and the HTTP receiver for them
    executors.py   how one event runs: oscar/batch process, warm Lambda environment, Docker
    definition.py  the function definition: a --model preset or a --config file, made local
    dropfolder.py  DIR/inbox watched with watchdog: files dropped there are uploaded
    progress.py    progress lines and the summary table (stderr)
    gateway.py     the web page beside the loop (conveyor.gateway): its port, login and catalogue entry
"""

# The gateway's port when --gateway-port is not given (or a free one when it is taken). Here, so
# the command's --help can show it without importing anything more.
GATEWAY_PORT = 8642
