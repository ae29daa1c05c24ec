"""with_env: a callable run with one environment variable set for the length of each call. The CPU
kernels read some settings per call (VSR_FAST_CPU_CONV, VSR_FAST_CPU_WEIGHT_CACHE), so benchmarks
can time both settings interleaved in one process. Imported by bench_models.py and
bench_residual_trunk.py (benchmarks/ is on sys.path, under pytest and when run as a script)."""

import os


def with_env(fn, name, value):
    """fn with the environment variable name=value during each call, restored after it."""

    def run(*args):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old

    return run
