"""One of `rnnkit tune --jobs J`'s worker processes: `python -m toolkit.tune.worker N` reads
{"settings": ..., "threads": T} as JSON on stdin and runs trials of the study until it has enough.

Processes rather than threads: MLflow's fluent API (the active run) and signal handling are per
process, and each trial's torch gets its own share of the cores. Exit codes: 0 done, 2 bad input
(e.g. the data), 130 interrupted (Ctrl-C or SIGTERM; the trial's MLflow run ends KILLED).
"""

from __future__ import annotations

import json
import signal
import sys


def main(argv: list[str]) -> int:
    import torch

    from toolkit.core.errors import RnnkitError
    from toolkit.tune.study import work
    from toolkit.tune.trial import Settings

    worker = int(argv[0])
    message = json.loads(sys.stdin.read())
    torch.set_num_threads(int(message["threads"]))
    settings = Settings(**message["settings"])
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: the trial's run ends KILLED
    try:
        work(settings, worker, log=lambda m: print(f"[worker {worker}] {m}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        return 130
    except RnnkitError as e:
        print(f"[worker {worker}] error: {e}", file=sys.stderr, flush=True)
        return getattr(e, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
