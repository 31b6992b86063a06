"""
The `bcqlm` console command.

    bcqlm ask --image scene.png --question "how many shapes are there?"
    bcqlm ask --image https://example.com/photo.jpg --question "what colour is the car?" --model org/bcqlm --top_k 3
    bcqlm export --engine onnx --precision int4 --output bcqlm-onnx-int4
    bcqlm ask --image scene.png --question "how many shapes are there?" --model bcqlm-onnx-int4
    bcqlm serve --model path/to/bcqlm --port 8000
    bcqlm demo --model path/to/bcqlm

`ask` answers with BcQLM's visual-question-answering pipeline; the model defaults to the small BcQLM shipped with the
package (`modeling_bcqlm.DEFAULT_MODEL`, trained on synthetic shape scenes), and then says so once on stderr
(`--no_notice` or `BCQLM_NO_NOTICE=1` silences it). `export` writes a folder whose decoder runs on ONNX Runtime, which
`ask --model` answers from as from any BcQLM folder. `serve` answers over HTTP with `transformers`' OpenAI-compatible
server (`modeling_bcqlm.serving`), `demo` on a Gradio page (`modeling_bcqlm.demo`); both listen on 127.0.0.1 unless
`--host` says otherwise. Arguments and local model folders are checked before torch and transformers are imported, so
that mistakes are reported at once.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ..engines import ONNX_PRECISIONS


DEFAULT_MODEL_NOTICE = (
    "bcqlm: note: the bundled model knows only synthetic scenes of circles, squares and triangles in five colours on a "
    "plain background; about other images its answers mean nothing. Pass --model for another BcQLM "
    "(--no_notice or BCQLM_NO_NOTICE=1 hides this note)."
)
DEVICE_PATTERN = re.compile(r"(cpu|mps|cuda|xpu)(:\d+)?")
# Any one of them: a PyTorch checkpoint, a sharded one, or a folder written by `bcqlm export`.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "front.safetensors")


class CommandError(Exception):
    """A mistake in the command's arguments or inputs, reported as `bcqlm: error: <message>` without a traceback."""


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="bcqlm", description="BcQLM visual question answering.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="Answer a question about an image.")
    ask.add_argument("--image", required=True, help="Path or URL of the image.")
    ask.add_argument("--question", required=True, help="The question about the image.")
    ask.add_argument(
        "--model", help="Folder or Hub id of a BcQLM model (default: the small model shipped with the package)."
    )
    ask.add_argument("--top_k", type=int, default=1, help="How many answers to print, best first, with their scores.")
    ask.add_argument("--max_new_tokens", type=int, default=16, help="The longest answer, in decoder tokens.")
    ask.add_argument("--device", default="cpu", help="Where the model runs: 'cpu', 'cuda', 'cuda:1', 'mps', ...")
    ask.add_argument("--timeout", type=float, default=10.0, help="Seconds to wait for an image URL's server.")
    ask.add_argument("--stream", action="store_true", help="Print the answer's tokens as they are generated.")
    ask.add_argument("--trust_remote_code", action="store_true", help="Allow code from a Hub model repository.")
    ask.add_argument("--no_notice", action="store_true", help="Do not print the bundled model's note on stderr.")
    export = commands.add_parser("export", help="Export a BcQLM for an inference engine (its decoder).")
    export.add_argument("--engine", choices=["onnx"], default="onnx", help="The engine: ONNX Runtime.")
    export.add_argument("--precision", choices=ONNX_PRECISIONS, default="int4", help="The decoder's weights.")
    export.add_argument("--model", help="Folder or Hub id of the BcQLM to export (default: the bundled model).")
    export.add_argument("--output", required=True, help="A new or empty folder for the exported model.")
    serve = commands.add_parser("serve", help="Answer over HTTP: transformers' OpenAI-compatible server.")
    demo = commands.add_parser("demo", help="Ask questions on a demo page in the browser (Gradio).")
    for command, port in ((serve, 8000), (demo, 7860)):
        command.add_argument("--model", help="Folder or Hub id of a BcQLM model (default: the bundled model).")
        command.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: this machine only).")
        command.add_argument("--port", type=int, default=port, help=f"Port to listen on (default: {port}).")
        command.add_argument(
            "--trust_remote_code", action="store_true", help="Run the model folder's own code, not the package's."
        )
    serve.add_argument("--device", default="auto", help="Where the model runs: 'auto', 'cpu', 'cuda', 'cuda:1', ...")
    serve.add_argument("--dtype", default="auto", help="The weights' dtype: 'auto' (as saved), 'float32', ...")
    serve.add_argument("--no_notice", action="store_true", help="Do not print the bundled model's note on stderr.")
    demo.add_argument("--device", default="cpu", help="Where the model runs: 'cpu', 'cuda', 'cuda:1', 'mps', ...")
    return parser.parse_args(argv)


def _check_args(args) -> None:
    if args.command in ("serve", "demo"):
        _check_server_args(args)
    elif args.command == "ask":
        _check_ask_args(args)
    if args.model is not None:
        _check_model_folder(args.model)


def _check_ask_args(args) -> None:
    if args.top_k < 1:
        raise CommandError("--top_k must be at least 1.")
    if args.stream and args.top_k > 1:
        raise CommandError("--stream prints one answer as it is generated: drop --top_k.")
    if args.max_new_tokens < 1:
        raise CommandError("--max_new_tokens must be at least 1.")
    if not args.timeout > 0:
        raise CommandError("--timeout must be a positive number of seconds.")
    if not args.question.strip():
        raise CommandError("--question is empty: write the question about the image.")
    if not DEVICE_PATTERN.fullmatch(args.device):
        raise CommandError(f"--device {args.device!r} is not a device: use 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'.")


def _check_server_args(args) -> None:
    if not 0 <= args.port < 65536:
        raise CommandError(f"--port {args.port} is not a port: pass a number from 0 to 65535.")
    if not (DEVICE_PATTERN.fullmatch(args.device) or (args.command == "serve" and args.device == "auto")):
        raise CommandError(f"--device {args.device!r} is not a device: use 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'.")


def _check_model_folder(model: str) -> None:
    """Check a `--model` that names a local folder; "org/name" that is not one is a Hub id, checked when loading."""
    path = Path(model).expanduser()
    if not path.exists() and not model.startswith((".", "~", "/")) and model.count("/") == 1:
        return  # "org/name": a Hub id
    if not path.is_dir():
        problem = "is a file" if path.exists() else "does not exist"
        raise CommandError(f"--model {model!r} {problem}: pass the folder of a saved BcQLM model or a Hub id.")
    if not (path / "config.json").is_file():
        raise CommandError(f"--model {model!r} holds no config.json: it is not a saved model (`save_pretrained`).")
    try:
        config = json.loads((path / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CommandError(f"{path / 'config.json'} is not valid JSON ({error}): save the model again.") from error
    _check_model_type(config, model)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CommandError(f"--model {model!r} holds no weights ({' or '.join(WEIGHT_FILES)}): save the model again.")


def _check_model_type(config: dict, model: str) -> None:
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "bcqlm":
        raise CommandError(
            f"--model {model!r} is a {model_type!r} model, not a BcQLM one (model_type 'bcqlm'): `bcqlm` answers with "
            "BcQLM models only."
        )


def _check_device(device: str) -> None:
    import torch

    kind, _, index = device.partition(":")
    backend = {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None), "mps": torch.backends.mps}.get(kind)
    if backend is not None and not (backend.is_available() and (not index or int(index) < backend.device_count())):
        raise CommandError(
            f"--device {device}: no such {kind} device is available to this torch ({torch.__version__}); "
            "use --device cpu, or install a torch built for your accelerator."
        )


def _streaming(args, processor) -> dict:
    """`{"streamer": ...}` printing the answer as it is generated (with `--stream`), else nothing."""
    if not args.stream:
        return {}
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        """Prints the new tokens' text; the answer's leading space is dropped, as the printed answers drop it."""

        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False):
            text, self.started = (text if self.started else text.lstrip()), self.started or bool(text.strip())
            super().on_finalized_text(text, stream_end)

    return {"streamer": AnswerStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)}


def _answer(args) -> list[dict]:
    """Load the model and its processor and answer `args.question` about `args.image`: `[{"answer", "score"}]`."""
    from transformers import AutoProcessor
    from transformers.utils import logging

    from .. import DEFAULT_MODEL, register_auto_classes
    from ..pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline

    register_auto_classes()
    logging.disable_progress_bar()  # loading a model of a few MB needs none; the command prints the answer only
    model_path = args.model or DEFAULT_MODEL
    model = _load_model(model_path, args)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=args.trust_remote_code)
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor, device=args.device)
    return vqa(
        image=args.image,
        question=args.question,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        timeout=args.timeout,
        **_streaming(args, processor),
    )


def _load_model(model_path: str, args):
    """The BcQLM at `model_path`: on ONNX Runtime for a folder written by `bcqlm export`, else in PyTorch."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, PreTrainedConfig

    from ..engines.onnx_model import BcQLMOnnxForConditionalGeneration, is_onnx_folder

    if is_onnx_folder(model_path):
        if args.device != "cpu":
            raise CommandError(f"{model_path!r} is an ONNX export: it runs on the CPU (--device cpu).")
        return BcQLMOnnxForConditionalGeneration.from_pretrained(model_path)
    try:
        _check_model_type(PreTrainedConfig.get_config_dict(model_path)[0], model_path)
        return AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=args.trust_remote_code)
    except SafetensorError as error:
        raise CommandError(
            f"The weights of {model_path!r} cannot be read ({error}): the file is incomplete or damaged. Download or "
            "save the model again."
        ) from error


def _export(args) -> None:
    from .. import DEFAULT_MODEL, register_auto_classes
    from ..engines.onnx_export import export_onnx

    register_auto_classes()
    folder = export_onnx(args.model or DEFAULT_MODEL, args.output, args.precision)
    print(f"bcqlm: exported to {folder} (decoder on ONNX Runtime, {args.precision}); ask with --model {folder}")


def _serve(args) -> None:
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise CommandError("`bcqlm serve` needs transformers' serving dependencies: pip install 'bcqlm[serve]'.")
    import uvicorn

    from .. import DEFAULT_MODEL, register_auto_classes

    try:
        from ..serving import BcQLMModelManager, build_app
    except ImportError as error:  # a transformers release whose server BcQLM does not run on
        raise CommandError(str(error)) from error

    if not args.trust_remote_code:  # else the folder's own code (its `auto_map`), as for any Hub model
        register_auto_classes()
    model = args.model or DEFAULT_MODEL
    # Pinned to `model`, loaded now: requests may name it or leave `model` out.
    manager = BcQLMModelManager(
        device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, force_model=model
    )
    app = build_app(manager)
    print(f"bcqlm: serving {model} at http://{args.host}:{args.port}/v1 (OpenAI chat completions)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _demo(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CommandError("`bcqlm demo` needs Gradio: pip install 'bcqlm[demo]'.") from error
    from .. import register_auto_classes
    from ..demo import launch

    if not args.trust_remote_code:  # else the folder's own code (its `auto_map`), as for any Hub model
        register_auto_classes()
    launch(args.model, host=args.host, port=args.port, device=args.device, trust_remote_code=args.trust_remote_code)


def _notice_silenced(args) -> bool:
    return args.no_notice or os.environ.get("BCQLM_NO_NOTICE", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _check_args(args)
        if args.command in ("ask", "serve") and args.model is None and not _notice_silenced(args):
            print(DEFAULT_MODEL_NOTICE, file=sys.stderr)
        if args.command in ("export", "serve", "demo"):
            {"export": _export, "serve": _serve, "demo": _demo}[args.command](args)
            return 0
        _check_device(args.device)
        answers = _answer(args)
    except (CommandError, OSError, ValueError) as error:  # a missing model or image, an unreadable file
        sys.exit(f"bcqlm: error: {error}")
    if args.stream:
        return 0  # printed as generated
    if args.top_k == 1:
        print(answers[0]["answer"])
    else:
        for answer in answers:
            print(f"{answer['score']:.4f}\t{answer['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
