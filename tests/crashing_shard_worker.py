"""A shard worker that dies in the middle of a write: ``python crashing_shard_worker.py POS:K <worker args>``.

The worker at position POS of the run writes its first K results, then half a line, and
exits with code 3, as a worker killed mid-write would. Tests point
``kner.inference.sharding.WORKER_COMMAND`` at this script.
"""

import os
import sys

from kner.inference import shard_worker

EXIT_CODE = 3

if __name__ == "__main__":
    pos, k = (int(x) for x in sys.argv[1].split(":"))
    argv = sys.argv[2:]
    me = int(argv[argv.index("--position") + 1])

    def after_flush(out, written: int) -> None:
        if me == pos and written >= k:
            out.write('{"index": ')
            out.flush()
            os._exit(EXIT_CODE)

    sys.exit(shard_worker.main(argv, after_flush=after_flush))
