"""A Faust agent that does nothing over the join's two topics: Faust's own ceiling here.

Run by bench_join in a subprocess: python -m bench._faust_noop BOOTSTRAP PREFIX PARTITIONS N
[table]. Prints "RATE <events/s>" once N events went through (with "table": one table write
per event, as the join makes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time

import faust


def main() -> None:
    bootstrap, prefix, partitions, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4])
    write = len(sys.argv) > 5 and sys.argv[5] == "table"
    app = faust.App(f"{prefix}-noop-{time.time_ns()}", broker=f"kafka://{bootstrap}",
                    store="memory://", datadir=tempfile.mkdtemp(), web_enabled=False,
                    topic_partitions=partitions, topic_replication_factor=1,
                    consumer_auto_offset_reset="earliest")
    source = app.topic(f"{prefix}.requests", f"{prefix}.outputs", key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")
    table = app.Table("noop", partitions=partitions)
    seen = [0, 0.0]

    @app.agent(source, concurrency=1)
    async def noop(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if seen[0] == 0:
                seen[1] = time.perf_counter()
            seen[0] += 1
            if write:
                table[event.message.key] = 1
            if seen[0] == n:
                sys.__stderr__.write(f"RATE {n / (time.perf_counter() - seen[1]):.0f}\n")
                os.kill(os.getpid(), signal.SIGTERM)

    asyncio.set_event_loop(asyncio.new_event_loop())
    faust.Worker(app, loglevel="ERROR", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
