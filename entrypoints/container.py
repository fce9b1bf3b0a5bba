"""The container entrypoint: `conveyor run`, which detects the platform itself."""

import sys

from runtime.cli import main


def run() -> None:
    main(["run", *sys.argv[1:]])


if __name__ == "__main__":
    run()
