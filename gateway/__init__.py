"""The gateway: a web page and a JSON API where people who know nothing of S3, Lambda or Batch pick
a model, upload files, follow their jobs and get the results (issue 19).

  catalogue.py  the models on offer (Model, load_catalogue: the YAML file `conveyor gateway` reads)
  users.py      the accounts (scrypt-hashed passwords)
  names.py      upload ids and the safe names uploads are stored under
  jobs.py       a user's jobs read back from the stores: inputs, result records, outputs, states
  batch.py      the state of a job handed off to AWS Batch (describe_jobs)
  auth.py       sessions (signed cookie + CSRF token) and HTTP Basic
  metrics.py    the Prometheus metrics (GET /metrics)
  server.py     the Starlette app (create_app) and Gateway (uvicorn in a thread)
  command.py    the `conveyor gateway` click command
  static/       the page: index.html, app.js, style.css (no framework, nothing from a CDN)

The gateway reads and writes only through the stores named in each model's function definition, and
imports only the core (never a handler, local mode or an edge): see .importlinter.
"""
