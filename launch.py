"""Start the rx web app: python launch.py [--host 127.0.0.1] [--port 7860]."""

import argparse
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: nothing is sent out

from rxapp.ui import build_app, launch_options


def main() -> None:
    parser = argparse.ArgumentParser(description="rx: TCM prescription decision support (local web app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    build_app().launch(**launch_options(args.host, args.port))


if __name__ == "__main__":
    main()
