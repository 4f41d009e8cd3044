"""How the service's own path scales with the queue, the job size and the worker count.

``python -m bench.scale`` (``--quick`` for a smaller run; ``--only queue intake workers``).
The provider costs nothing: the built-in fake (``imagestudio fake-provider --latency-ms 0
--render-size 64``, no limits, its own process), 64x64 jpeg targets, every provider key's
window pinned open, so only the service is measured. SQLite and PostgreSQL side by side in
one run; scratch databases are removed and subprocesses killed whatever happens, and every
cell has a timeout: a cell that fails or times out is marked in the report, the rest stand.

1. images/s with 400, 10,000 and 100,000 images queued, as one job and as many users with
   one job each (``bench/scale/queue.py``), over a fixed number of completions;
2. intake: seconds to the 201 and the server's RSS for a job of 400, 10,000 and 100,000
   images POSTed to ``imagestudio serve`` (``bench/scale/intake.py``);
3. ``Store.claim_batch`` latency, p50 and p99, at the same depths (``queue.py``);
4. 1, 2 and 4 ``imagestudio worker`` processes on PostgreSQL, one job, with each side's CPU
   (``bench/scale/workers.py``).

Writes ``bench/out/scale.md`` (``--out`` elsewhere).
"""
