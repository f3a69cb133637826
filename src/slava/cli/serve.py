"""``slava serve``: the OpenAI-compatible HTTP server and web page for one trained run."""

from __future__ import annotations

import argparse
import ipaddress
import os

from slava.errors import SlavaError
from slava.hardware import PRECISIONS

KEY_ENV = "SLAVA_API_KEY"


def register(subparsers) -> None:
    """Add the ``serve`` command."""
    p = subparsers.add_parser(
        "serve",
        help="serve a run over an OpenAI-compatible HTTP API with a web page",
        description="Serve a trained run: POST /v1/chat/completions (OpenAI format), /v1/classify, /v1/measure, "
        "/v1/preview, GET /v1/models, /v1/labels, /healthz, and a web page at /. Every /v1/ route needs "
        f"'Authorization: Bearer ${KEY_ENV}' unless --insecure-local.",
    )
    p.add_argument("--run", default=None, help="run directory (default: $SLAVA_RUN, else runs/smol-cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--insecure-local", action="store_true",
                   help=f"serve without an API key when {KEY_ENV} is unset; loopback hosts only")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image accepted, in MiB (default 20)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests the model runs as one batch (default 8)")
    p.add_argument("--max-megapixels-in-flight", type=float, default=64.0,
                   help="image pixels (from their headers) all requests may hold at once; more wait (default 64)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--rank", type=int, default=None, help="DyA-MoPE inference rank (default: the trained r_max)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="compute precision (default auto: bf16 only where the hardware runs it natively)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(host: str, insecure_local: bool, api_key: str | None) -> None:
    """Refuse settings that would expose the model without a key; raises ``SlavaError``."""
    if insecure_local and not _is_loopback(host):
        raise SlavaError(f"--insecure-local serves without a key, so it only binds a loopback address, not {host!r}; "
                         f"set {KEY_ENV} to serve on {host}")
    if not api_key and not insecure_local:
        raise SlavaError(f"no API key: set {KEY_ENV} (clients send it as 'Authorization: Bearer <key>'), or pass "
                         "--insecure-local to serve without one on 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    """Check the security settings, load the run, and serve until interrupted."""
    api_key = os.environ.get(KEY_ENV) or None
    check_security(args.host, args.insecure_local, api_key)
    if args.max_upload_mb <= 0 or args.max_batch < 1 or not 0 <= args.port <= 65535 or args.max_megapixels_in_flight <= 0:
        raise SlavaError("--max-upload-mb and --max-megapixels-in-flight must be > 0, --max-batch >= 1 and "
                         "--port in 0..65535")

    from pathlib import Path

    import uvicorn

    from slava.assistant import Assistant, default_run
    from slava.hardware import use_threads
    from slava.serve import create_app
    from slava.serve.app import LOOPBACK_NAMES

    run_dir = Path(args.run or default_run())
    threads = use_threads("auto")
    assistant = Assistant.load(run_dir, device=args.device, rank=args.rank, precision=args.precision)
    app = create_app(
        assistant,
        api_key=api_key,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_batch=args.max_batch,
        model_name=run_dir.resolve().name,
        labels=assistant.labels,
        max_pixels_in_flight=max(1, int(args.max_megapixels_in_flight * 1e6)),
        # Without a key, only requests addressed to the bound loopback address (and its names) are answered.
        allowed_hosts=(*LOOPBACK_NAMES, args.host if ":" not in args.host else f"[{args.host}]"),
        port=args.port or None,
    )
    auth = "bearer key required" if api_key else "NO authentication (--insecure-local)"
    print(f"serving {run_dir} on http://{args.host}:{args.port}/ ({auth}); {assistant.precision.name}, "
          f"{threads} threads: {assistant.precision.reason}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
