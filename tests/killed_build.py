"""Run a builder as `mmpo build NAME --config F key=value ...` does, and SIGKILL this process after it commits
AFTER items: a real kill mid-build (no cleanup, no exception handlers), for the shard tests.

    python tests/killed_build.py NAME AFTER --config F key=value ...
"""

import os
import signal
import sys

from mmpo.builders import BUILDERS
from mmpo.config import load


def main(argv: list[str]) -> None:
    name, after, rest = argv[0], int(argv[1]), argv[2:]
    config = rest[rest.index("--config") + 1] if "--config" in rest else None
    overrides = [a for a in rest if "=" in a and not a.startswith("--")]
    config_cls, build = BUILDERS[name]

    def die(n: int) -> None:
        if n == after:
            os.kill(os.getpid(), signal.SIGKILL)

    build(load(config_cls, config, overrides), on_record=die)
    sys.exit(f"{name} finished before its kill after {after} items: the test's premise is wrong")


if __name__ == "__main__":
    main(sys.argv[1:])
