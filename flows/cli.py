"""Command line shared by the study flows: validate params first, then run the flow.

    python -m flows.gaussian [params.yaml]
    python -m flows.images [params.yaml] [digits|mnist|cifar10]     (flows with several studies)

A bad params file or corrupt stored data stops with one line on stderr and a non-zero exit
code, before any output is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tasks.params import ParamsError, load_params
from tasks.storage import CorruptDataError, InputUnavailableError


def main(flow_fn: Callable[..., object], argv: list[str] | None = None, studies: list[str] | None = None,
         preflight: Callable[..., object] | None = None) -> int:
    """Run `flow_fn(params_file=...)`, or with `studies`, `flow_fn(params_file=..., study=...)`.

    `preflight`, called with the same arguments before the flow starts, checks the other inputs
    (data files, upstream outputs) so that a problem there is also one line, not a flow failure."""
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    if studies:
        parser.add_argument("study", nargs="?", default=studies[0], choices=studies)
    args = parser.parse_args(argv)
    try:
        load_params(args.params)
        kwargs = {"params_file": args.params, **({"study": args.study} if studies else {})}
        if preflight:
            preflight(**kwargs)
        flow_fn(**kwargs)
    except (ParamsError, CorruptDataError, InputUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
