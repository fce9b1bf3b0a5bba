"""The deepaas handler: DEEPaaS models (the DEEP Open Catalog's packaging), warm in-process or as a child.

    conveyor:
      handler:
        name: deepaas
        mode: auto        # warm | cli | predict | auto (default)
        model: NAME       # entry-point name in `deepaas.v2.model`; needed when several are installed
        accept: TYPE      # media type asked of the model (image/png, application/zip ...); default: the model's
        args: {...}       # further predict arguments (e.g. {top_k: 3}); a file-type argument takes a
                          # path (relative: from Conveyor's working directory), handed to the model as an
                          # uploaded file in every mode; checked against the model's schema before it runs
        file_arg: NAME    # which file argument gets the input, when the model declares several
        cli_shim: true    # cli mode: run deepaas-cli's own main() under a small patch (shim.py)

Modes (one module each)
  warm     the model loaded into this process once, predict() per record on one model thread (warm.py)
  cli      deepaas-cli per record in a child process, with the model's own Python (cli.py, probe.py, shim.py)
  predict  deepaas-predict per record, for old images (predict.py)
  auto     warm when deepaas imports in this process and the model's entry point loads here; else cli
           when `deepaas-cli` is on the record's PATH; else predict. (Several models with none named
           is a configuration error in every mode, not a reason to fall back.)

Whatever the mode, the model gets a private copy of the input in the record's work dir, under the
input's original file name (catalog models delete their input); what it returns becomes one output
file named after the input (results.py). `args` is checked the same way in every mode before the model
runs (warm: the model's schema here; cli: the same schema loaded by the probe in the model's Python;
predict: takes none): a value it refuses is a ConfigError (78) naming `conveyor.handler.args.<name>`,
worded the same (selection.args_rejected). A model exception is a HandlerError carrying the model's
own message, in every mode (model_log.py reads it out of a child's log).
"""

from conveyor.handlers.deepaas.handler import DeepaasHandler
from conveyor.handlers.deepaas.interpreter import script_interpreter
from conveyor.handlers.deepaas.results import sniff_extension, write_result

__all__ = ["DeepaasHandler", "script_interpreter", "sniff_extension", "write_result"]
