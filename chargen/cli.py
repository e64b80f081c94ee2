"""The ``chargen`` command line: a thin layer over the library.

Usage::

    chargen prepare [SOURCE] [--json] ...          # text -> vocabulary + cached ids
    chargen train [SOURCE] --out RUN [...]         # train an LSTM/GRU on it
    torchrun --nproc_per_node N -m chargen train ...   # the same on N processes (DDP)
    chargen sample RUN [--prompt TEXT] [...]       # generate text, streamed to stdout
    chargen eval RUN FILE [--json]                 # loss of a text under the model
    chargen info RUN [--json]                      # what a run is and how far it got

Each subcommand parses its flags and calls one library function. Mistakes a
user can make (a ChargenError from the library, a bad flag) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import ChargenError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                   help="a text file, folder, glob, corpus name (tinyshakespeare, pystdlib) or "
                        "hf:NAME; default: pystdlib, the running Python's standard library")
    p.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                   help="share of the text, after the training part, that validates (default: the "
                        "corpus's registry split, else 0.1)")
    p.add_argument("--test-fraction", type=_fraction, default=None, metavar="F",
                   help="share at the very end held out for testing (default 0)")
    p.add_argument("--normalize", choices=("none", "nfc", "nfkc"), default="none",
                   help="Unicode normalization applied before anything else (default none)")
    p.add_argument("--lowercase", action="store_true", help="lowercase the text")
    p.add_argument("--min-char-count", type=_positive_int, default=1, metavar="N",
                   help="characters seen fewer than N times in training become the unknown token")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")
    p.add_argument("--errors", choices=("strict", "replace", "ignore"), default="strict",
                   help="what to do with undecodable bytes (default strict: stop with the offset)")
    p.add_argument("--text-column", default="text", metavar="COL",
                   help="column holding the text, for hf: sources (default text)")
    p.add_argument("--corpora-dir", action="append", default=[], metavar="DIR",
                   help="folder searched first for named corpora (repeatable; also $CHARGEN_CORPORA)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where prepared corpora and downloads live (default $CHARGEN_CACHE or ~/.cache/chargen)")


def _prepare_kwargs(args) -> dict:
    return dict(corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir,
                val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                normalize=args.normalize, lowercase=args.lowercase,
                min_char_count=args.min_char_count, encoding=args.encoding,
                errors=args.errors, text_column=args.text_column)


def cmd_prepare(args) -> int:
    from .data import prepare

    corpus = prepare(args.source, progress=not args.json and sys.stderr.isatty(),
                     **_prepare_kwargs(args))
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
    # Every default is None so that --preset and --config can fill them in (see trainconfig.py).
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or resume)")
    m = p.add_argument_group("model")
    m.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (default lstm)")
    m.add_argument("--layers", type=int, metavar="L", help="stacked layers (default 2)")
    m.add_argument("--hidden", type=int, metavar="H", help="hidden size (default 256)")
    m.add_argument("--embedding", type=int, metavar="E", help="embedding size (default: the hidden size)")
    m.add_argument("--dropout", type=float, metavar="P", help="dropout between layers and before the head (default 0)")
    m.add_argument("--tie", action="store_const", const=True, help="tie the embedding and head weights")
    t = p.add_argument_group("optimization")
    t.add_argument("--batch-size", type=int, metavar="B", help="streams per batch (default 64)")
    t.add_argument("--bptt", type=int, metavar="T", help="steps per batch; gradients stop after T (default 128)")
    t.add_argument("--layout", choices=("stateful", "random"),
                   help="stateful streams with carried state (default), or random windows from the zero state")
    t.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 2e-3)")
    t.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW weight decay (default 0)")
    t.add_argument("--clip", type=float, metavar="C", help="clip the global gradient norm at C (default 1.0)")
    t.add_argument("--warmup-steps", type=int, metavar="N", help="linear warmup steps (default 100)")
    t.add_argument("--schedule", choices=("cosine", "constant"), help="learning-rate schedule (default cosine)")
    t.add_argument("--decay-steps", type=int, metavar="N",
                   help="cosine length (default: the step or time budget the run is created with)")
    t.add_argument("--seed", type=int, help="random seed (default 1337)")
    b = p.add_argument_group("budget (whichever comes first; default --epochs 10)")
    b.add_argument("--max-steps", type=int, metavar="N")
    b.add_argument("--epochs", type=float, metavar="N")
    b.add_argument("--max-time", metavar="DURATION", help="wall-clock budget: 90s, 5m, 1h")
    e = p.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-every", type=int, metavar="N", help="validate every N steps (default 500)")
    e.add_argument("--eval-batch-size", type=int, metavar="N", help="validation streams (default 32)")
    e.add_argument("--patience", type=int, metavar="N", help="stop after N evaluations without improvement")
    e.add_argument("--checkpoint-every", type=int, metavar="N", help="write last/ every N steps (default 1000)")
    e.add_argument("--log-every", type=int, metavar="N", help="metrics line every N steps (default 50)")
    e.add_argument("--preview-chars", type=int, metavar="N", help="sample length shown at each evaluation (default 200)")
    r = p.add_argument_group("run")
    r.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default auto: CUDA when present")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="default auto: fp32 on CPU, bf16 (else fp16) on CUDA")
    r.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (keys are flag names)")
    r.add_argument("--preset", help="named options: cpu, gpu, tiny")
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")


_TRAIN_OPTION_FLAGS = ("cell", "layers", "hidden", "embedding", "dropout", "tie", "batch_size", "bptt",
                       "layout", "lr", "weight_decay", "clip", "warmup_steps", "schedule", "decay_steps",
                       "seed", "max_steps", "epochs", "max_time", "eval_every", "eval_batch_size",
                       "patience", "checkpoint_every", "log_every", "preview_chars", "device", "precision")
_PREPARE_FLAGS = ("val_fraction", "test_fraction", "normalize", "lowercase", "min_char_count",
                  "encoding", "errors", "text_column")


def cmd_train(args) -> int:
    from .train import train

    options = {k: getattr(args, k) for k in _TRAIN_OPTION_FLAGS}
    # prepare flags count only when given: their argparse defaults are not "given"
    defaults = {"normalize": "none", "lowercase": False, "min_char_count": 1, "encoding": "utf-8",
                "errors": "strict", "text_column": "text"}
    for k in _PREPARE_FLAGS:
        v = getattr(args, k)
        if v is not None and defaults.get(k, None) != v:
            options[k] = v
    result = train(args.source, out=args.out, resume=args.resume, overwrite=args.overwrite,
                   progress=args.progress, corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir,
                   config_file=args.config, preset=args.preset, **options)
    if not result.main:  # one summary per run, from rank 0
        return 0
    best = ("no validation split" if result.best_val_loss is None else
            f"best val {result.best_val_loss:.4f} nats/char ({result.best_val_bpc:.4f} bpc)")
    print(f"trained {result.steps} steps in {result.elapsed:.0f}s ({result.chars_per_sec:,.0f} chars/s, "
          f"stopped: {result.stopped}); {best}")
    print(f"run: {result.run_dir}   sample: chargen sample {result.run_dir}")
    return 0


def cmd_info(args) -> int:
    from .info import run_info

    info = run_info(args.run)
    if args.json:
        print(json.dumps(info))
        return 0
    m, t = info["model"], info["train"]
    print(f"{info['run']}: {m['cell'].upper()} {m['num_layers']}x{m['hidden_size']}, "
          f"{info['parameters']:,} parameters, vocabulary {m['vocab_size']}")
    print(f"  corpus: {info['corpus']['source']} ({info['corpus']['chars']:,} characters)")
    print(f"  trained: {info['steps']} steps, {info['elapsed']:.0f}s; batch {t['batch_size']} x bptt {t['bptt']}, "
          f"lr {t['lr']}, {t['schedule']} schedule")
    if info["best_val_loss"] is not None:
        print(f"  best validation: {info['best_val_loss']:.4f} nats/char ({info['best_val_bpc']:.4f} bpc) "
              f"at step {info['best_step']}")
    return 0


def _unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` in a flag value, so ``--stop '\\n\\n'`` means two newlines."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return v


def cmd_sample(args) -> int:
    from .sample import Sampler

    if args.prompt is not None and args.prompt_file is not None:
        raise ChargenError("pass --prompt or --prompt-file, not both")
    prompt = _unescape(args.prompt) if args.prompt is not None else ""
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ChargenError(f"cannot read prompt file {args.prompt_file}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint)
    options = dict(length=args.length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   stop=[_unescape(s) for s in args.stop] or None, seed=args.seed, unknown=args.unknown)
    out = sys.stdout
    if args.n == 1:
        pieces = sampler.stream(prompt, **options)  # validates before anything is printed
        first = next(pieces, "")
        out.write(prompt + first)
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        return 0
    texts = sampler.generate(prompt, n=args.n, **options)
    for i, text in enumerate(texts):
        if i:
            out.write(f"\n----- sample {i + 1} of {args.n} -----\n")
        else:
            out.write(f"----- sample 1 of {args.n} -----\n")
        out.write(prompt + text + "\n")
    out.flush()
    return 0


def cmd_eval(args) -> int:
    from .sample import Sampler

    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint)
    score = sampler.score_file(args.file)
    result = {"run": args.run, "file": args.file, "chars": score.chars, "nats": score.nats, "bpc": score.bpc}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.file}: {score.chars:,} characters, {score.nats:.4f} nats/char ({score.bpc:.4f} bpc)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="chargen", description="Character-level text generation with LSTM/GRU models.")
    parser.add_argument("--version", action="version", version=f"chargen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("prepare", help="build the vocabulary and cached ids of a corpus",
                       description="Decode, normalize and split a corpus; build its character "
                                   "vocabulary from the training split; cache the ids.")
    _add_source_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train an LSTM/GRU language model on a corpus",
                       description="Train with stateful truncated BPTT, gradient clipping, validation, "
                                   "checkpoints and exact resume. Ctrl-C saves a checkpoint.")
    _add_source_args(p)
    for action in p._actions:  # prepare options: None unless given, so a resume can tell
        if action.dest in ("val_fraction", "test_fraction", "min_char_count"):
            action.default = None
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Print the prompt and its continuation to stdout as it is generated.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--prompt", default=None, help="text to continue (\\n, \\t escapes allowed); default: none")
    p.add_argument("--prompt-file", default=None, metavar="F", help="read the prompt from a UTF-8 file")
    p.add_argument("--length", type=int, default=500, metavar="N", help="characters to generate (default 500)")
    p.add_argument("--temperature", type=_nonneg_float, default=0.8, metavar="T",
                   help="softmax temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K likeliest characters")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample from the smallest set whose probability reaches P")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT appears (not printed; repeatable; \\n escapes allowed)")
    p.add_argument("-n", type=int, default=1, metavar="N", help="samples, decoded together in one batch")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text (default: random)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best weights by validation loss (default) or the last checkpoint")
    p.add_argument("--unknown", choices=("error", "unk"), default="error",
                   help="prompt characters outside the vocabulary: an error (default) or the unknown token")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="loss of a text file under a run's model (nats/char and bpc)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="describe a run: config, size, progress, best validation loss")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_info)
    return parser


def _leave_process_group_quietly() -> None:
    """Under torchrun, exit now: tearing down a process group whose peers are also failing can
    abort in C++ destructors after the one-line message, which is all the user should see."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chargen`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ChargenError as e:
        print(f"chargen {args.command}: error: {e}", file=sys.stderr)
        _leave_process_group_quietly()
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"chargen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `chargen sample ... | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0
