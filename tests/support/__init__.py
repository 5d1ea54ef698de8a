"""The testing package: what tests and benchmarks share, and nothing the wheel ships.

It lives under tests/ (imported as `tests.support`; pytest puts the repository root on `sys.path`, the
benchmarks add it themselves) so that `pip install .` still adds one import name, `slotune`. Test
modules import from here and never from each other (tests/unit/test_test_imports.py checks that).

    paths           REPO, SHARED, FIXTURES (the vLLM 0.32 captures), FIELD_CASES, CACHE: computed once
    pages           the captures by name, and variants made from them (older names, Ray's prefix, ...)
    http_servers    real HTTP on 127.0.0.1: a webhook receiver that records POSTs, a /metrics page server
    polling         wait_until (poll a predicate), wait_http_ready (start-and-poll a child process)
    procs           what a test started that still runs, read from /proc
    echo_server     a trivially fast OpenAI-compatible SSE endpoint (the load generator's test double)
    postgres        a real PostgreSQL on loopback (the `postgres_url` fixture, registered in conftest)
    promstack       real Prometheus and Alertmanager with the committed configs; dashboard queries
    sidecar         the sidecar's loop with a scripted scrape and a settable clock; alert payloads
    sidecar_process `slotune sidecar` as a real process, and a load that rides out restarts
    tuner           a synthetic `Measure` for the study's mechanics; `slotune tune` as a subprocess
    api_edges       the API's id and filter routes at their limits (used on SQLite and PostgreSQL)
    quantiles       Prometheus' histogram_quantile written as its docs state it (a reference)
"""
