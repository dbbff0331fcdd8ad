"""``python bench/fixed_window.py BYTES ARGS...``: ``python -m relay ARGS``, fixed stream window.

A stand-in for the relay's ``--max-stream-window`` option in trees that do not
have it (the WAN bench uses the option when ``relay --help`` lists it): it
changes the default of ``yamux.Config.max_stream_window_size``, which every
session of that relay or forwarder is created with, then runs the relay's CLI.
Run it by file path with the measured tree first on ``PYTHONPATH``, so the
``yamux`` and ``relay`` it patches are that tree's.
"""

import dataclasses
import runpy
import sys


def set_default_window(size: int) -> None:
    import yamux

    config = yamux.Config
    init = config.__init__
    if init.__kwdefaults__ and "max_stream_window_size" in init.__kwdefaults__:
        init.__kwdefaults__["max_stream_window_size"] = size
        return
    positional = [f.name for f in dataclasses.fields(config) if f.init and not f.kw_only]
    defaults = list(init.__defaults__ or ())
    index = positional.index("max_stream_window_size") - (len(positional) - len(defaults))
    defaults[index] = size
    init.__defaults__ = tuple(defaults)
    if config().max_stream_window_size != size:
        raise SystemExit("fixed_window.py: could not change yamux.Config's default window")


if __name__ == "__main__":
    del sys.path[0]  # this file's directory (bench/) must not shadow anything of the relay's
    set_default_window(int(sys.argv[1]))
    sys.argv = ["relay", *sys.argv[2:]]
    runpy.run_module("relay", run_name="__main__", alter_sys=True)
