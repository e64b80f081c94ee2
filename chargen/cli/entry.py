"""The ``chargen`` command line: a thin layer over the library.

Usage::

    chargen prepare [SOURCE] [--json] ...          # text -> vocabulary + cached ids
    chargen train [SOURCE] --out RUN [...]         # train an LSTM/GRU on it
    torchrun --nproc_per_node N -m chargen train ...   # the same on N processes (DDP)
    chargen sample RUN [--prompt TEXT] [...]       # generate text, streamed to stdout
    chargen eval RUN FILE | --split val|test       # loss of a text, or of a split, under the model
    chargen info RUN [--json]                      # what a run is and how far it got
    chargen serve RUN [--port 8000] [...]          # an OpenAI-compatible HTTP API over a run
    chargen plot RUN [RUN...] [-o curves.png]      # loss curves of runs in one PNG
    chargen export RUN -o DIR                      # the model as one ONNX step, for other runtimes

Each subcommand parses its flags and calls one library function. Mistakes a
user can make (a ChargenError from the library, a bad flag) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ..errors import ChargenError, Interrupted
from ..config.options import add_flags, given

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Flags that are not options of a config dataclass: where things are, and what to do with a run.
_SOURCE_HELP = ("a text file, folder, glob, corpus name (tinyshakespeare, pystdlib) or hf:NAME; "
                "default: pystdlib, the running Python's standard library")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    from ..config import PrepareOptions

    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help=_SOURCE_HELP)
    add_flags(p, PrepareOptions)
    p.add_argument("--corpora-dir", action="append", default=[], metavar="DIR",
                   help="folder searched first for named corpora (repeatable; also $CHARGEN_CORPORA)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where prepared corpora and downloads live (default $CHARGEN_CACHE or ~/.cache/chargen)")


def cmd_prepare(args) -> int:
    from ..config import PrepareOptions
    from ..data.prepared import prepare

    corpus = prepare(args.source, corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir,
                     progress=not args.json and sys.stderr.isatty(), **given(args, PrepareOptions))
    s = corpus.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    state = "reused" if s["reused"] else "prepared"
    print(f"{state} {s['source']}: {s['chars']:,} characters, vocabulary of {s['vocab_size']}")
    print(f"  split: train {s['train_chars']:,} / val {s['val_chars']:,} / test {s['test_chars']:,}")
    if s["unknown_chars"]:
        print(f"  unknown characters (outside the vocabulary): {s['unknown_chars']:,} "
              f"{s['unknown_by_split']}")
    print(f"  cache: {s['cache_dir']}  (fingerprint {s['fingerprint'][:12]})")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from ..config import PRESETS, ModelConfig, TrainConfig

    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or resume)")
    add_flags(p, ModelConfig)
    add_flags(p, TrainConfig)
    r = p.add_argument_group("run")
    r.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (keys are flag names)")
    r.add_argument("--preset", help=f"named options: {', '.join(PRESETS)}")
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    r.add_argument("--init-from", metavar="BASE_RUN", default=None,
                   help="fine-tune: start from this run's weights and shape; characters it lacks are added to "
                        "its vocabulary (peak lr: the base's, and warmup 20 steps, unless given)")
    r.add_argument("--init-checkpoint", choices=("best", "last"), default=None,
                   help="the base's best weights (default) or its last checkpoint")
    r.add_argument("--keep-vocab", action="store_true",
                   help="with --init-from: keep the base's vocabulary; other characters become <unk>")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")


def cmd_train(args) -> int:
    from ..config import OPTION_CLASSES
    from ..training.trainer import train

    options = {k: v for cls in OPTION_CLASSES for k, v in given(args, cls).items()}
    result = train(args.source, out=args.out, resume=args.resume, overwrite=args.overwrite,
                   progress=args.progress, corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir,
                   config_file=args.config, preset=args.preset, init_from=args.init_from,
                   init_checkpoint=args.init_checkpoint, keep_vocab=args.keep_vocab, **options)
    if not result.main:  # one summary per run, from rank 0
        return 0
    best = ("no validation split" if result.best_val_loss is None else
            f"best val {result.best_val_loss:.4f} nats/char ({result.best_val_bpc:.4f} bpc)")
    print(f"trained {result.steps} steps in {result.elapsed:.0f}s on {result.device}, {result.precision} "
          f"({result.chars_per_sec:,.0f} chars/s, "
          f"stopped: {result.stopped}); {best}")
    print(f"run: {result.run_dir}   sample: chargen sample {result.run_dir}")
    return 0


def cmd_plot(args) -> int:
    from ..runs.plot import plot

    out = plot(args.runs, args.output, x=args.x)
    print(f"chargen plot: wrote {out}", file=sys.stderr)
    return 0


def _add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders, drawn together")
    p.add_argument("-o", "--output", default="curves.png", metavar="FILE.png",
                   help="the PNG to write (default curves.png)")
    p.add_argument("--x", choices=("step", "time", "chars"), default="step",
                   help="against steps (default), wall-clock minutes or millions of characters seen")


def cmd_info(args) -> int:
    from ..runs.info import run_info

    info = run_info(args.run)
    if args.json:
        print(json.dumps(info))
        return 0
    m, t = info["model"], info["train"]
    head = f", adaptive softmax (cutoffs {','.join(map(str, m['cutoffs']))})" if m.get("softmax") == "adaptive" else ""
    print(f"{info['run']}: {m['cell'].upper()} {m['num_layers']}x{m['hidden_size']}, "
          f"{info['parameters']:,} parameters, vocabulary {m['vocab_size']}{head}")
    print(f"  corpus: {info['corpus']['source']} ({info['corpus']['chars']:,} characters)")
    print(f"  trained: {info['steps']} steps, {info['elapsed']:.0f}s; batch {t['batch_size']} x bptt {t['bptt']}, "
          f"lr {t['lr']}, {t['schedule']} schedule")
    if info["best_val_loss"] is not None:
        print(f"  best validation: {info['best_val_loss']:.4f} nats/char ({info['best_val_bpc']:.4f} bpc) "
              f"at step {info['best_step']}")
    init = info.get("init")
    if init:
        best = "" if init.get("best_val_loss") is None else f", best val {init['best_val_loss']:.4f} nats/char"
        vocab = (f"{init['unknown_chars']:,} characters read as <unk> (--keep-vocab)" if init.get("keep_vocab")
                 else f"{init.get('added_chars', 0)} characters added to its {init['vocab_size']}" +
                 (f", {init['unknown_chars']:,} read as <unk>" if init.get("unknown_chars") else ""))
        print(f"  fine-tuned from: {init['from']} ({init['checkpoint']} weights, step {init['step']}{best}; "
              f"corpus {init['corpus_fingerprint'][:12]}); {vocab}")
    return 0


def _unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` in a flag value, so ``--stop '\\n\\n'`` means two newlines.

    By hand rather than with the ``unicode_escape`` codec, which decodes its input
    as Latin-1 (mangling any non-ASCII prompt) and would also expand ``\\x``,
    ``\\u`` and ``\\N{...}`` sequences that a user may mean literally.
    """
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _prompt(args) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise ChargenError("pass --prompt or --prompt-file, not both")
    if args.prompt_file is None:
        prompt = _unescape(args.prompt) if args.prompt is not None else ""
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 reach Python as lone surrogates
            raise ChargenError("--prompt is not valid UTF-8; pass UTF-8 text") from None
        return prompt
    try:
        with open(args.prompt_file, encoding="utf-8-sig") as f:  # a leading BOM (Windows editors) is not text
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ChargenError(f"cannot read prompt file {args.prompt_file}: "
                           f"{getattr(e, 'strerror', None) or e}") from None


def cmd_sample(args) -> int:
    from ..config import SampleOptions
    from ..generate.sampler import Sampler

    prompt = _prompt(args)
    settings = given(args, SampleOptions)
    settings["stop"] = tuple(_unescape(s) for s in settings.get("stop", ()))
    options = SampleOptions(**settings)
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint, backend=args.backend)
    out = sys.stdout
    if options.n == 1:
        pieces = sampler.stream(prompt, options)  # validates before anything is printed
        out.write(prompt + next(pieces, ""))
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        return 0
    for i, text in enumerate(sampler.generate(prompt, options)):
        out.write(f"{chr(10) if i else ''}----- sample {i + 1} of {options.n} -----\n")
        out.write(prompt + text + "\n")
    out.flush()
    return 0


def cmd_eval(args) -> int:
    from ..generate.sampler import Sampler

    if (args.file is None) == (args.split is None):
        raise ChargenError("give a FILE to score, or --split val|test for the run's own corpus (not both)")
    if args.split is None and (args.source is not None or args.batch_size is not None):
        raise ChargenError("--source and --batch-size go with --split; to score a file, pass only FILE")
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint,
                           backend=_eval_backend(args))
    if args.file is not None:
        score, what = sampler.score_file(args.file), args.file
        result = {"run": args.run, "file": args.file}
    else:
        from ..runs.folder import open_run_dir
        from ..training.launch import run_corpus

        corpus = run_corpus(open_run_dir(args.run), args.source, corpora_dirs=args.corpora_dir,
                            cache_dir=args.cache_dir)
        score = sampler.score_split(corpus, args.split, batch_size=args.batch_size or 32,
                                    progress=sys.stderr.isatty())
        what = f"{args.split} split of {corpus.meta['source']}"
        result = {"run": args.run, "split": args.split}
    result.update(chars=score.count, nats=score.nats, bpc=score.bpc)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{what}: {score.count:,} characters, {score.nats:.4f} nats/char ({score.bpc:.4f} bpc)")
    return 0


def _eval_backend(args) -> str:
    """Scoring reads whole sequences, which torch does in one call per layer: ``auto`` is torch when it is
    installed (NumPy otherwise); ``--split`` needs torch."""
    from ..generate.sampler import resolve_backend, torch_installed

    if args.split is not None and args.backend == "numpy":
        raise ChargenError("--split runs on the torch backend; leave out --backend numpy")
    if args.split is not None and not torch_installed():
        raise ChargenError('--split needs PyTorch, which is not installed here: pip install "chargen[train]" '
                           "(scoring a FILE works without it)")
    if args.backend == "auto" and (torch_installed() or args.split is not None):
        return resolve_backend("torch", args.device)
    return resolve_backend(args.backend, args.device)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", nargs="?", default=None, help="a text file to score")
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="score the run's own corpus split instead: every character, exactly as validation "
                        "reads it (from the prepared cache, or prepared again from the source)")
    p.add_argument("--source", default=None, metavar="SOURCE",
                   help="with --split: where the run's corpus is now, if not where it was trained from")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="with --split: segments read side by side (default 32); the figure does not depend on it")
    p.add_argument("--corpora-dir", action="append", default=[], metavar="DIR",
                   help="with --split: folder searched first for named corpora (repeatable)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where prepared corpora live (default $CHARGEN_CACHE or ~/.cache/chargen)")


def _int_in(low: int, high: int):
    """An argparse type: a whole number in [low, high]."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value
    convert.__name__ = "int"
    return convert


_positive_int = _int_in(1, 1 << 20)


def cmd_export(args) -> int:
    from ..generate.export import export

    out = export(args.run, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({"run": args.run, "output": str(out), "files": ["model.onnx", "tokenizer.json",
                                                                           "chargen.json"]}))
    else:
        print(f"exported {args.run} ({args.checkpoint} weights) to {out}: model.onnx, tokenizer.json, chargen.json")
    return 0


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder to write model.onnx, tokenizer.json and chargen.json into (new or empty)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best weights by validation loss (default) or the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")


def cmd_serve(args) -> int:
    from ..serve.app import Limits, serve

    api_key = args.api_key if args.api_key is not None else os.environ.get("CHARGEN_API_KEY")
    if api_key is not None:
        where = "--api-key" if args.api_key is not None else "CHARGEN_API_KEY"
        if not api_key:
            raise ChargenError(f"{where} is empty: give a key, or leave it out to serve without one")
        if not all("!" <= c <= "~" for c in api_key):
            raise ChargenError(f"{where} must be printable ASCII without spaces (clients send it in a header)")
    limits = Limits(max_length=args.max_length, max_queued=args.max_queued)
    serve(args.run, host=args.host, port=args.port, device=args.device, checkpoint=args.checkpoint,
          api_key=api_key, max_batch=args.max_batch, limits=limits, threads=args.threads,
          stream_interval=args.stream_interval / 1000)
    return 0


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=_positive_int, default=256, metavar="N",
                   help="rows decoded together (default 256)")
    p.add_argument("--max-length", type=_positive_int, default=4096, metavar="N",
                   help="most characters one completion may ask for (default 4096)")
    p.add_argument("--max-queued", type=_positive_int, default=256, metavar="N",
                   help="rows decoding or waiting beyond which requests get 429 (default 256)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require Authorization: Bearer KEY on /v1 routes (also $CHARGEN_API_KEY)")
    p.add_argument("--stream-interval", type=_int_in(0, 10_000), default=20, metavar="MS",
                   help="a stream writes at most every MS milliseconds, what is ready in one chunk (default 20; "
                        "0: every character)")
    p.add_argument("--threads", type=_int_in(1, 1024), default=None, metavar="N",
                   help="torch threads of the decoding process (default: one fewer than the CPUs, at least 1)")


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best weights by validation loss (default) or the last checkpoint")


def _add_backend_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--backend", choices=("auto", "torch", "numpy"), default="auto",
                   help=f"what runs the model: numpy (CPU only, no torch needed) or torch; auto (default): "
                        f"{default_help}")


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    from ..config import SampleOptions

    _add_load_args(p)
    _add_backend_arg(p, "numpy on the CPU, where it is faster, torch on another device")
    p.add_argument("--prompt", default=None, help="text to continue (\\n, \\t escapes allowed); default: none")
    p.add_argument("--prompt-file", default=None, metavar="F", help="read the prompt from a UTF-8 file")
    add_flags(p, SampleOptions)


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = _Parser(prog="chargen", description="Character-level text generation with LSTM/GRU models.")
    parser.add_argument("--version", action="version", version=f"chargen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    commands = [
        ("prepare", cmd_prepare, [_add_source_args, _add_json],
         "build the vocabulary and cached ids of a corpus",
         "Decode, normalize and split a corpus; build its character vocabulary from the training split; "
         "cache the ids."),
        ("train", cmd_train, [_add_source_args, _add_train_args],
         "train an LSTM/GRU language model on a corpus",
         "Train with stateful truncated BPTT, gradient clipping, validation, checkpoints and exact resume. "
         "Ctrl-C saves a checkpoint."),
        ("sample", cmd_sample, [_add_sample_args], "generate text from a trained run",
         "Print the prompt and its continuation to stdout as it is generated."),
        ("eval", cmd_eval, [_add_load_args, _add_eval_args, _add_eval_backend, _add_json],
         "loss of a text file, or of the run's validation or test split, under a run's model (nats/char, bpc)",
         None),
        ("serve", cmd_serve, [_add_load_args, _add_serve_args],
         "serve a run over HTTP: an OpenAI-compatible completions API with continuous batching", None),
        ("export", cmd_export, [_add_export_args, _add_json],
         "write a run's model as one ONNX step (model.onnx), with its vocabulary, for apps in any language",
         None),
        ("plot", cmd_plot, [_add_plot_args],
         "draw runs' loss curves into a PNG: validation bpc and training loss, resumes and best checkpoints",
         None),
        ("info", cmd_info, [_add_run, _add_json],
         "describe a run: config, size, progress, best validation loss", None),
    ]
    for name, func, adders, help, description in commands:
        p = sub.add_parser(name, help=help, description=description or help)
        for add in adders:
            add(p)
        p.set_defaults(func=func)
    return parser


def _add_eval_backend(p: argparse.ArgumentParser) -> None:
    _add_backend_arg(p, "torch when it is installed (it reads a whole text faster), else numpy")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN")


def _leave_process_group_quietly() -> None:
    """Under torchrun, exit now: tearing down a process group whose peers are also failing can
    abort in C++ destructors after the one-line message, which is all the user should see."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_USAGE)


# Modules of the optional extras, and the extra that installs each.
_EXTRAS = {"torch": "train", "datasets": "train", "starlette": "serve", "uvicorn": "serve",
           "matplotlib": "plot", "onnx": "export", "onnxruntime": "export"}


def _uses_torch(args) -> bool:
    """Whether the command will run torch (and so imports it up front), as far as it is installed."""
    from ..generate.sampler import resolve_backend, torch_installed

    if not torch_installed():
        return False
    if args.command in ("train", "serve"):
        return True
    if args.command == "sample":
        return resolve_backend(args.backend, args.device) == "torch"
    if args.command == "eval":
        return _eval_backend(args) == "torch"
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chargen`` command; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "eval" and args.file is None and len(rest) == 1 and not rest[0].startswith("-"):
        args.file = rest[0]   # FILE after an option (argparse fills the optional FILE only right after RUN)
    elif rest:
        parser.exit(EXIT_USAGE, f"chargen {args.command}: error: unrecognized arguments: {' '.join(rest)} "
                                f"(see chargen {args.command} --help)\n")
    try:
        if argv is None:  # the process itself: a kill cleans up like Ctrl-C
            from ..signals import ctrl_c_deferred, stop_like_ctrl_c
            stop_like_ctrl_c()
            if args.command != "info":
                with ctrl_c_deferred():  # see ctrl_c_deferred: not inside numpy's or torch's initialisation
                    import numpy  # noqa: F401
                    if _uses_torch(args):
                        import torch  # noqa: F401
        return args.func(args)
    except ModuleNotFoundError as e:
        extra = _EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        extra = "serve" if args.command == "serve" else extra
        print(f"chargen {args.command}: error: this needs {e.name}, which is not installed: "
              f'pip install "chargen[{extra}]"', file=sys.stderr)
        return EXIT_USAGE
    except ChargenError as e:
        print(f"chargen {args.command}: error: {e}", file=sys.stderr)
        _leave_process_group_quietly()
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        if argv is None:  # the process is exiting: a further Ctrl-C must not cut its shutdown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not isinstance(e, Interrupted):  # the trainer has already said what happened
            print(f"chargen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `chargen sample ... | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0
