"""The function definition (contract section 3), parsed once into frozen dataclasses: load_config().

One module per concern; each imports only those above it in this list, and loader.py ties them:
  redaction.py  what counts as a secret, and how it is masked for `conveyor inspect`
  model.py      FunctionConfig and its parts (ProviderRef, StorageProvider, IOSpec ...), the constants
  values.py     typed reads of YAML values; errors name the key path and the source
  sources.py    where the definition comes from (--config, /var/task, FDL, /oscar/config,
                FUNCTION_CONFIG, the image's defaults), base64 and YAML parsing, the `read_file` seam
  shapes.py     the SCAR / OSCAR / oscar-cli document shapes, and which function a file holding several means
  providers.py  `storage_providers`, and minio.default's secret files
  settings.py   Conveyor's own `conveyor:` block
  script.py     the user script (contract section 4)
  loader.py     load_config()
"""

from conveyor.config.loader import load_config
from conveyor.config.model import (
    DEFAULTS_SOURCE,
    ENV_SOURCE,
    EXECUTION_MODES,
    HIDDEN,
    IMAGE_DEFAULTS_PATH,
    ISOLATION_LEVELS,
    LAMBDA_CONFIG_PATH,
    LAMBDA_TASK_DIR,
    LOG_LEVELS,
    MINIO_DEFAULT,
    MINIO_DEFAULT_ENDPOINT,
    MINIO_SECRET_FILES,
    MINIO_SECRETS_DIR,
    OSCAR_CONFIG_PATH,
    OSCAR_SCRIPT_PATH,
    PROVIDER_TYPES,
    S3_DEFAULT,
    ConveyorSettings,
    FunctionConfig,
    HandlerSpec,
    IOSpec,
    ProviderRef,
    ReadFile,
    StorageProvider,
)
from conveyor.config.redaction import REDACTED
from conveyor.config.sources import read_text_file

__all__ = [
    "DEFAULTS_SOURCE",
    "ENV_SOURCE",
    "EXECUTION_MODES",
    "HIDDEN",
    "IMAGE_DEFAULTS_PATH",
    "ISOLATION_LEVELS",
    "LAMBDA_CONFIG_PATH",
    "LAMBDA_TASK_DIR",
    "LOG_LEVELS",
    "MINIO_DEFAULT",
    "MINIO_DEFAULT_ENDPOINT",
    "MINIO_SECRETS_DIR",
    "MINIO_SECRET_FILES",
    "OSCAR_CONFIG_PATH",
    "OSCAR_SCRIPT_PATH",
    "PROVIDER_TYPES",
    "REDACTED",
    "S3_DEFAULT",
    "ConveyorSettings",
    "FunctionConfig",
    "HandlerSpec",
    "IOSpec",
    "ProviderRef",
    "ReadFile",
    "StorageProvider",
    "load_config",
    "read_text_file",
]
