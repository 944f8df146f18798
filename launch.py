"""Start the rx web app on the embedded default model: python launch.py [--model PATH] [--db PATH] [--port 7860]."""

import argparse
import os
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: nothing is sent out

from rxapp import DEFAULT_MODEL
from rxapp.backends import QUANTIZATIONS
from rxapp.engine import BACKENDS, DEVICES, Engine
from rxapp.feedback import FeedbackStore, StoreError
from rxapp.ui import build_app, launch_options

DEFAULT_DB = Path(os.environ.get("RX_DB", Path.home() / ".local" / "share" / "rx" / "feedback.sqlite"))


def user_password(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth takes USER:PASSWORD")
    return user, password


def main() -> None:
    parser = argparse.ArgumentParser(description="rx: TCM prescription decision support (local web app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file or HF folder (default: shipped)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="llama.cpp for GGUF, hf for folders")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: the GPU when there is one")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="HF folders only: load the weights in 4 or 8 bits with bitsandbytes (for a GPU)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"feedback database (default: {DEFAULT_DB})")
    parser.add_argument("--auth", type=user_password, help="USER:PASSWORD required to open the page")
    args = parser.parse_args()
    try:
        store = FeedbackStore(args.db)
    except StoreError as e:
        parser.exit(2, f"rx: {e}\n")
    with Engine() as engine:  # launch() blocks until the server stops (Ctrl-C); then the model is closed
        engine.load(args.model, args.backend, args.device, args.quantization)
        print(f"rx: {engine.status()}\nrx: feedback database {store.path}", flush=True)
        build_app(engine, store).launch(**launch_options(args.host, args.port, args.auth))


if __name__ == "__main__":
    main()
