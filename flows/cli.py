"""Command line shared by the study flows: validate params first, then run the flow.

    python -m flows.gaussian [params.yaml]

A bad params file or corrupt stored data stops with one line on stderr and a non-zero exit
code, before any output is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tasks.params import ParamsError, load_params
from tasks.storage import CorruptDataError


def main(flow_fn: Callable[..., object], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        load_params(args.params)
        flow_fn(params_file=args.params)
    except (ParamsError, CorruptDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
