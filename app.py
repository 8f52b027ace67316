"""Try a trained model in the browser: generate slices, read a slice, the map, the model card.

    python app.py                                          # the `make demo` model and data
    python app.py --model runs/ldm --data AD_NC --port 7861

Serves a Gradio app on http://127.0.0.1:PORT (this machine only) and prints the address. Requests
queue and run one at a time on the model's device; bad input gets a message in the page.
"""

import os
import signal
import sys

from pipelines.app import MAX_UPLOAD_MB, AppSession, launch
from pipelines.cli import DEFAULT_DATA, DEFAULT_MODEL, script_parser
from pipelines.errors import UserError, cli_entry


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder")
    parser.add_argument("--data", default=None,
                        help=f"AD_NC folder for test slices and the map (default {DEFAULT_DATA} "
                             "when it exists)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {args.port}")
    data = args.data if args.data is not None else (
        str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # a stop by SIGTERM (a service manager, `kill`) exits like Ctrl-C: the session's temporary
    # folder is removed on the way out instead of being left in /tmp
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    session = AppSession(args.model, data, args.device)
    print(f"model {args.model} ({session.kind}); data {data or 'none'}; uploads up to "
          f"{MAX_UPLOAD_MB} MB", flush=True)
    launch(session, args.port)


if __name__ == "__main__":
    main()
