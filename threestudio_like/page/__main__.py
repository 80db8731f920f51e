"""``python -m threestudio_like.page RUN_DIR... [-o DIR] [--serve [--port N]]``

Writes a run's page (``RUN_DIR/page/index.html``); with several runs, a folder of runs (a sweep,
``outputs/``) or ``-o``, also an index page over them (``DIR/index.html``). ``--serve`` then serves
the pages on 127.0.0.1 only (the pages also open from disk, without a server).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence

from threestudio_like.page.facts import PageError, find_runs
from threestudio_like.page.run_page import write_pages


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m threestudio_like.page", description=__doc__.split("\n\n")[1])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (outputs/<name>/<run>) or folders of runs")
    parser.add_argument("-o", "--out", type=Path, default=None, help="folder of the index page over the runs")
    parser.add_argument("--serve", action="store_true", help="serve the pages on http://127.0.0.1:PORT/ until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve (0: any free port)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port; use 0–65535")
    return args


def serve(root: Path, page: Path, port: int) -> None:
    """Serve ``root`` on 127.0.0.1 (never other interfaces) and print the page's address."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/{page.relative_to(root).as_posix()}"
        print(f"serving {root} at {url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        pages = write_pages(args.runs, args.out)
    except PageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for page in pages:
        print(f"page: {page}")
    if args.serve:
        folders = [p.resolve() for p in [*pages, *find_runs(list(args.runs))]]
        serve(Path(os.path.commonpath([str(p) for p in folders])), pages[0].resolve(), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
