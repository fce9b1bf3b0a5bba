"""`conveyor serve`: the model kept warm behind an HTTP server that speaks OSCAR's sync contract,
and the per-pod warm daemon `conveyor run` forwards to (`conveyor: warm: true`).

    command.py    the click command (`conveyor serve`); imports the server only when it runs
    worker.py     one request through the pipeline: a Job per request, a shared handler and stores,
                  the model slots, the answer (status, body, exit code)
    app.py        the Starlette app (any path: the request; /_/health, /health, /metrics) and the
                  uvicorn server around it (SIGTERM drains, idle exit)
    metrics.py    the Prometheus registry of one server
    daemon.py     the client side of the warm daemon (stdlib only: `conveyor run` stays light)

This module holds only the names both sides of the daemon's socket share: it is imported by
`conveyor run`.
"""

DEFAULT_PORT = 8080

# Headers of the warm daemon's protocol (conveyor.serve.daemon -> conveyor serve --socket).
RUN_HEADER = "X-Conveyor-Run"  # "1": answer as `conveyor run` would (stdout body, exit code, stderr lines)
HTTP_VARS_HEADER = "X-Conveyor-Http"  # JSON object: the Http_* variables the watchdog gave `conveyor run`
EXIT_CODE_HEADER = "X-Conveyor-Exit-Code"  # the exit code `conveyor run` would have exited with
REQUEST_ID_HEADER = "X-Request-Id"
