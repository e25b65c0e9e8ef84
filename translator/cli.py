"""Command line: ``translator {prepare,train,translate,evaluate,average,export,download,serve}``.

The only module that reads argv, writes to stdout/stderr and chooses exit codes.
Bad input (files, config, flags) -> one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from translator import __version__
from translator.errors import RunError, UserError

log = logging.getLogger("translator")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        command = self.prog.removeprefix("translator").strip()  # main adds "translator: "
        raise UserError(f"{command}: {message}" if command else message)


def _output_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """-q / --verbose, before or after the command (a subcommand's copy only sets them
    when given, so it never undoes the top-level one)."""
    default = False if top else argparse.SUPPRESS
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="only warnings on stderr")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also the resolved config, debug messages and TensorFlow's start-up "
                        "log (or set TRANSLATOR_VERBOSE=1)")


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--data-root", metavar="DIR",
                   help="corpus root (default: $TRANSLATOR_DATA_ROOT, else ./data)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="translator", description=(
        "Neural machine translation: SentencePiece + BiLSTM encoder + attention decoder."))
    parser.add_argument("--version", action="version", version=f"translator {__version__}")
    _output_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prepare", help="clean/split the corpus and train the tokenizer")
    _common(p)

    p = sub.add_parser("train", help="train a model (prepares the run dir if needed; resumes)")
    _common(p)
    p.add_argument("--json", action="store_true",
                   help="print each epoch's record as JSON on stdout (the default when stdout "
                        "is not a terminal)")

    p = sub.add_parser("translate", help="translate sentences with a trained run dir")
    p.add_argument("run_dir")
    p.add_argument("text", nargs="*", help="sentences (else --input, else stdin)")
    p.add_argument("--input", "-i", metavar="FILE")
    p.add_argument("--output", "-o", metavar="FILE")
    _decode_flags(p)
    p.add_argument("--n-best", type=int, metavar="N",
                   help="up to N distinct hypotheses per line, tab-separated, best first "
                        "(default: the run's decode.n_best)")
    p.add_argument("--attention-plot", metavar="PNG",
                   help="heatmap of the first sentence's attention")
    _ensemble_flag(p)
    _decode_set(p)

    p = sub.add_parser("evaluate", help="translate a test split and score it (JSON)")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=["test", "dev"])
    p.add_argument("--src", metavar="FILE", help="source file (with --ref) instead of --split")
    p.add_argument("--ref", metavar="FILE", help="reference file (with --src)")
    p.add_argument("--output", "-o", metavar="HYP",
                   help="where to write hypotheses (default RUN_DIR/eval/<split>.hyp; "
                        "with --ensemble RUN_DIR/eval/<split>.ensemble.hyp)")
    _decode_flags(p)
    _ensemble_flag(p)
    _decode_set(p)

    p = sub.add_parser("average", help="average the weights of the last epoch checkpoints")
    p.add_argument("run_dir")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, metavar="N",
                       help="the newest N kept epoch checkpoints (default: all kept)")
    group.add_argument("--epochs", type=int, nargs="+", metavar="E", help="these epochs")
    p.add_argument("--output", "-o", metavar="FILE.weights.h5",
                   help="default RUN_DIR/checkpoints/averaged.weights.h5")

    p = sub.add_parser("export", help="write a SavedModel that translates raw text (TF Serving)")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="where the SavedModel goes (a new or empty directory)")
    p.add_argument("--weights", metavar="FILE", help=(
        "weights to export (default: checkpoints/best.weights.h5; a bare name is looked up "
        "in the run's checkpoints/)"))
    p.add_argument("--beam-size", type=int, metavar="K",
                   help="1 = greedy (default: the run's decode.beam_size)")
    p.add_argument("--length-penalty", type=_finite_float, metavar="A",
                   help="GNMT alpha (default: the run's decode.length_penalty)")
    p.add_argument("--n-best", type=int, metavar="N",
                   help="columns of the n_best output (default: the run's decode.n_best, at "
                        "most the beam size)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")

    p = sub.add_parser("download", help="fetch a public corpus (needs internet)")
    p.add_argument("name", help="spa-eng or multi30k")
    p.add_argument("--dest", metavar="DIR", help="default: the data root")
    _common(p, config=False)

    p = sub.add_parser("serve", help="serve a trained run over HTTP: API and demo page")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080; 0 = a free port")
    p.add_argument("--max-batch", type=int, default=64, metavar="N",
                   help="most sentences decoded together (default 64; 1 = no batching)")
    p.add_argument("--batch-wait-ms", type=_finite_float, default=5.0, metavar="MS",
                   help="how long a batch waits for more requests after its first, or after "
                        "the worker is free if it was busy (default 5)")
    p.add_argument("--beam-size", type=int, metavar="K",
                   help="default beam size of requests (default: the run's decode.beam_size)")
    p.add_argument("--weights", metavar="FILE", help=(
        "weights to load (default: checkpoints/best.weights.h5; a bare name is looked up "
        "in the run's checkpoints/)"))
    p.add_argument("--max-sentences", type=int, default=256, metavar="N",
                   help="most sentences per request (default 256)")
    p.add_argument("--max-chars", type=int, default=2000, metavar="N",
                   help="most characters per sentence (default 2000)")
    _decode_set(p)
    for p in sub.choices.values():
        _output_flags(p, top=False)
    parser.commands = dict(sub.choices)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a command's options and positional text may come in any order
    (``translate RUN --beam-size 5 "Hallo"``), which argparse's subparsers refuse."""
    parser = build_parser()
    commands = parser.commands
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or argv[first] not in commands or {"-h", "--help", "--version"} & set(argv[:first]):
        return parser.parse_args(argv)  # help, version, or the error for a missing command
    args = argparse.Namespace(command=argv[first])
    options = _Parser(prog="translator", add_help=False)
    _output_flags(options, top=True)
    options.parse_args(argv[:first], namespace=args)
    commands[argv[first]].parse_intermixed_args(argv[first + 1:], namespace=args)
    return args


def _decode_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="decode.KEY=VALUE",
                   help="override a decode setting of the run's config.yaml (repeatable)")


def _ensemble_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ensemble", nargs="+", default=[], metavar="RUN_DIR2", help=(
        "decode with RUN_DIR and these run dirs as one ensemble (mean of their "
        "log-probabilities at every step); they must share RUN_DIR's tokenizer; decode "
        "settings come from RUN_DIR (and the flags); sentences given as arguments go before "
        "--ensemble"))


def _finite_float(text: str) -> float:
    """``type=`` for float flags: ``float()`` alone accepts ``nan`` and ``inf``."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _decode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="FILE", help=(
        "weights to load (default: checkpoints/best.weights.h5; a bare name is looked up "
        "in the run's checkpoints/, e.g. averaged.weights.h5)"))
    p.add_argument("--beam-size", type=int, metavar="K", help="1 = greedy (default: config)")
    p.add_argument("--length-penalty", type=_finite_float, metavar="A", help="GNMT alpha")
    p.add_argument("--batch-size", type=int, metavar="B", help="sentences per batch")


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _status(enabled: bool):
    """A spinner on stderr for slow steps; yields ``step(message)``."""
    if not enabled:
        yield lambda msg: log.info(msg)
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:
        def step(msg: str) -> None:
            log.info(msg)
            status.update(msg)
        yield step


def _read_text_lines(path: str | None) -> list[str]:
    """Lines of a file (or stdin when path is None), keeping empty lines."""
    if path is None:
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
        name = path
    from translator.corpus import decode_lines

    return [line.lstrip("\ufeff").rstrip("\r") for line in decode_lines(data, name)]


def _write_lines(path: str | None, lines: list[str]) -> None:
    if path is None:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        return
    from translator.fileio import write_lines_atomic

    write_lines_atomic(Path(path), lines)


def _check_decode_flags(args) -> None:
    for flag, value, low in (("--beam-size", args.beam_size, 1), ("--batch-size", args.batch_size, 1),
                             ("--n-best", getattr(args, "n_best", 1), 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise UserError(f"--length-penalty must be >= 0, got {args.length_penalty}")


def _load_translator(args):
    """The run dir's :class:`Translator`, or with ``--ensemble`` the ensemble of RUN_DIR and
    those run dirs (each with its best weights)."""
    from translator.translator import Translator

    if not args.ensemble:
        return Translator.load(args.run_dir, args.weights, args.overrides)
    return Translator.load([args.run_dir, *args.ensemble], None, args.overrides)


def _check_ensemble_flags(args) -> None:
    """Before any input is read: ``--ensemble`` names run dirs and excludes ``--weights``."""
    if not args.ensemble:
        return
    if args.weights:
        raise UserError("--weights cannot be combined with --ensemble: every member decodes "
                        "with its checkpoints/best.weights.h5 (from Python, "
                        "Translator.load([...], weights=[...]) takes one per run dir)")
    for run in args.ensemble:
        if not (Path(run) / "config.yaml").is_file():
            raise UserError(f"--ensemble {run}: not a run dir (no config.yaml); sentences given "
                            "as arguments go before --ensemble (or use --input FILE)")


def _warn_too_long(results, max_len: int | None, what: str = "inputs") -> int:
    """One warning line for the sources longer than the model was trained on."""
    count = sum(r.source_too_long for r in results)
    if count:
        is_, its, it = ("is", "its translation", "it") if count == 1 else (
            "are", "their translations", "them")
        print(f"translator: warning: {count} of {len(results)} {what} {is_} longer than "
              f"train.max_len={max_len} subwords, the longest the model was trained on; "
              f"{its} may be cut short: split {it} into sentences", file=sys.stderr)
    return count


def _progress(total: int, enabled: bool):
    """A progress bar on stderr; returns (context manager, advance function)."""
    from rich.console import Console
    from rich.progress import Progress

    if not enabled:
        @contextmanager
        def nothing():
            yield
        return nothing(), lambda n: None
    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("translating", total=total)
    return progress, lambda n: progress.advance(task, n)


# ----------------------------------------------------------------------------- commands


def cmd_prepare(args) -> int:
    from translator.config import load_config
    from translator.corpus import resolve_data_root
    from translator.prepare import RunPaths, prepare
    from translator.training import run_lock

    cfg = load_config(args.config, args.overrides)
    root = resolve_data_root(args.data_root)
    log.debug("config:\n%s", _dump(cfg))
    started = time.perf_counter()
    # a prepare swaps the tokenizers and splits in: not under a running train or prepare
    with run_lock(RunPaths(Path(cfg.run_dir)), "prepared"), _status(sys.stderr.isatty()) as step:
        stats = prepare(cfg, root, step)
    stats["seconds"] = round(time.perf_counter() - started, 1)
    print(_stats_table(stats, cfg.run_dir))
    return 0


def _dump(cfg) -> str:
    from translator.config import dump_config

    return dump_config(cfg).rstrip()


def _stats_table(stats: dict, run_dir: str) -> str:
    rows = [("pairs read", stats["pairs_read"])]
    if stats["pairs_not_used_max_pairs"]:
        rows.append(("not used (data.max_pairs)", stats["pairs_not_used_max_pairs"]))
    for rule, n in stats["dropped"].items():
        rows.append((f"dropped: {rule}", n))
    for name, n in stats["split_off"].items():
        rows.append((f"split off for {name}", n))
    for name, n in stats["pairs"].items():
        rows.append((f"{name} pairs", n))
    rows.append(("train pairs over train.max_len subwords", stats["train_over_max_len_subwords"]))
    v = stats["vocab_size"]
    rows.append(("vocab (src / tgt)", f"{v['src']} / {v['tgt']}" + (" joint" if stats["joint_vocab"] else "")))
    m = stats["mean_subwords"]
    rows.append(("mean subwords (src / tgt)", f"{m['src']} / {m['tgt']}"))
    if "dev_unk_rate_percent" in stats:
        u = stats["dev_unk_rate_percent"]
        rows.append(("dev unk rate % (src / tgt)", f"{u['src']} / {u['tgt']}"))
    rows.append(("seconds", stats["seconds"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v:>12,}" if isinstance(v, int) else f"{k:<{width}}  {v!s:>12}"
             for k, v in rows]
    return "\n".join([f"prepared {run_dir}", *lines])


class _EpochBar:
    """A progress bar per epoch on stderr (rich), gone when the epoch's line is printed."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = None

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task(f"epoch {epoch}/{epochs}", total=steps, loss="-")
        self.epoch = f"epoch {epoch}/{epochs}"

    def batch_end(self, logs: dict) -> None:
        loss = logs.get("loss")
        self.bar.update(self.task, advance=1, loss=f"{loss:.3f}" if loss is not None else "-")

    def dev_begin(self) -> None:
        self.bar.update(self.task, description=f"{self.epoch}: dev")

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _epoch_line(record: dict, epochs: int) -> str:
    """One readable line per epoch, rounded for people."""
    def num(key: str, fmt: str) -> str:
        value = record.get(key)
        return "-" if value is None else format(value, fmt)

    return (f"epoch {record['epoch']}/{epochs}  loss {num('loss', '.3f')}  "
            f"dev loss {num('dev_loss', '.3f')}  dev BLEU {num('dev_bleu', '.2f')}  "
            f"(best {num('best_dev_bleu', '.2f')})  {num('tgt_tokens_per_sec', ',.0f')} tok/s  "
            f"{num('seconds', '.0f')} s")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def _train_summary(summary: dict) -> str:
    """What a person wants to know when training ends, and what to run next."""
    import shlex

    from translator.prepare import RunPaths, read_prepared_split
    from translator.translator import BEST_WEIGHTS

    run = summary["run_dir"]
    paths = RunPaths(Path(run))
    lines = []
    if summary.get("best_epoch"):
        bleu = summary.get("best_bleu")
        lines.append(f"best dev BLEU {bleu} at epoch {summary['best_epoch']} (greedy) "
                     if bleu is not None and bleu >= 0 else
                     f"last epoch {summary['best_epoch']} (no dev set) ")
        lines[-1] += (f"of {summary.get('epoch')} trained; training took "
                      f"{_duration(summary.get('train_wall_seconds', 0.0))}")
    lines.append(f"weights: {paths.checkpoints / BEST_WEIGHTS}")
    dev = read_prepared_split(paths, "dev")
    example = dev.src[0] if dev is not None and len(dev) else "your sentence"
    lines.append("next:")
    lines.append(f"  translator translate {shlex.quote(run)} {shlex.quote(example)}")
    if read_prepared_split(paths, "test") is not None:
        lines.append(f"  translator evaluate {shlex.quote(run)} --split test")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from translator.config import load_config
    from translator.corpus import resolve_data_root

    cfg = load_config(args.config, args.overrides)
    root = resolve_data_root(args.data_root)
    log.debug("config:\n%s", _dump(cfg))
    from translator.training import train

    terminal = sys.stdout.isatty()
    as_json = args.json or not terminal

    def on_record(record: dict) -> None:
        if as_json:
            print(json.dumps(record), flush=True)
        if terminal:
            print(_epoch_line(record, cfg.train.epochs), file=sys.stderr, flush=True)

    progress = _EpochBar() if terminal and sys.stderr.isatty() and not args.quiet else None
    summary = train(cfg, root, report=lambda msg: log.info(msg), on_record=on_record,
                    progress=progress)
    print(json.dumps(summary) if as_json else _train_summary(summary))
    return 0


def cmd_translate(args) -> int:
    _check_decode_flags(args)
    _check_ensemble_flags(args)
    if args.text:
        texts = list(args.text)
    else:
        if args.input is None and sys.stdin.isatty():
            raise UserError("translate: give sentences as arguments, --input FILE, or pipe stdin")
        texts = _read_text_lines(args.input)
    t = _load_translator(args)
    show = args.input is not None and sys.stderr.isatty()
    bar, advance = _progress(len(texts), show)
    with bar:
        results = t.translate(texts, beam_size=args.beam_size, length_penalty=args.length_penalty,
                              n_best=args.n_best, batch_size=args.batch_size,
                              return_attention=bool(args.attention_plot), on_batch=advance)
    _warn_too_long(results, t.max_len)
    _, _, n_best = t.settings(args.beam_size, args.length_penalty, args.n_best)
    lines = ["\t".join(h.text for h in r.n_best) if n_best > 1 and r.n_best else r.text
             for r in results]
    _write_lines(args.output, lines)
    if args.attention_plot:
        first = next((r for r in results if r.attention is not None), None)
        if first is None:
            raise UserError("--attention-plot: no non-empty sentence to plot")
        from translator.plotting import plot_attention

        plot_attention(first.attention, first.source_pieces,
                       first.n_best[0].pieces + ["</s>"], Path(args.attention_plot))
        log.info("attention plot written to %s", args.attention_plot)
    return 0


def _beside(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` instead of its own, or added when it already has it."""
    other = path.with_suffix(suffix)
    return other if other != path else path.with_name(path.name + suffix)


def cmd_evaluate(args) -> int:
    _check_decode_flags(args)
    _check_ensemble_flags(args)
    if (args.src is None) != (args.ref is None):
        raise UserError("evaluate: --src and --ref go together")
    run_dir = Path(args.run_dir)
    if args.src is not None:
        src, ref, name = _read_text_lines(args.src), _read_text_lines(args.ref), Path(args.src).name
        if len(src) != len(ref):
            raise UserError(f"{args.src} has {len(src)} lines but {args.ref} has {len(ref)}; "
                            "source and reference must align")
    else:
        from translator.prepare import RunPaths, read_prepared_split

        pairs = read_prepared_split(RunPaths(run_dir), args.split)
        if pairs is None:
            raise UserError(f"{run_dir}: has no {args.split} split; use --src F --ref F")
        src, ref, name = pairs.src, pairs.tgt, args.split
    from translator.metrics import score_all
    from translator.translator import BEST_WEIGHTS

    t = _load_translator(args)
    beam, alpha, n_best = t.settings(args.beam_size, args.length_penalty)
    bar, advance = _progress(len(src), sys.stderr.isatty())
    started = time.perf_counter()
    with bar:
        results = t.translate(src, beam_size=beam, length_penalty=alpha, n_best=n_best,
                              batch_size=args.batch_size, on_batch=advance)
    seconds = time.perf_counter() - started
    hyps = [r.text for r in results]
    # never overwrites the single float32 model's files
    kind = (".ensemble" if args.ensemble else "") + (
        ".bfloat16" if t.decode.dtype == "bfloat16" else "")
    out = Path(args.output) if args.output else run_dir / "eval" / f"{name}{kind}.hyp"
    _write_lines(str(out), hyps)
    from translator.config import load_config
    from translator.prepare import RunPaths

    too_long = _warn_too_long(results, t.max_len, "sentences")
    # on the best hypothesis, tokenized for the target language
    scores = score_all(hyps, ref, load_config(RunPaths(run_dir).config).data.tgt_lang)
    scores.update({"split": name, "weights": args.weights or BEST_WEIGHTS,
                   "beam_size": beam, "length_penalty": alpha,
                   "decode_dtype": t.decode.dtype,
                   "translate_seconds": round(seconds, 1), "hypotheses": str(out),
                   "sources_over_max_len": too_long})
    if n_best > 1:  # the run's decode.n_best (or --set decode.n_best=N), at most the beam
        nbest = _beside(out, ".nbest")
        _write_lines(str(nbest), ["\t".join(h.text for h in r.n_best) for r in results])
        scores.update({"n_best": n_best, "nbest": str(nbest)})
    if args.ensemble:
        scores.update({"ensemble": [str(run_dir), *args.ensemble],
                       "ensemble_size": t.ensemble_size})
    from translator.fileio import write_text_atomic

    # the record is saved beside the hypotheses: RUN/eval/test.json by default, which
    # serve's /v1/model shows; an ensemble's is test.ensemble.json and a bfloat16 decoding's
    # test.bfloat16.json, never the single float32 model's
    saved = _beside(out, ".json")
    scores["json"] = str(saved)
    write_text_atomic(saved, json.dumps(scores) + "\n")
    print(json.dumps(scores))
    return 0


def cmd_average(args) -> int:
    from translator.averaging import average_checkpoints

    print(json.dumps(average_checkpoints(args.run_dir, last=args.last, epochs=args.epochs,
                                         output=args.output)))
    return 0


def cmd_export(args) -> int:
    for flag, value in (("--beam-size", args.beam_size), ("--n-best", args.n_best)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise UserError(f"--length-penalty must be >= 0, got {args.length_penalty}")
    if not Path(args.run_dir).is_dir():
        raise UserError(f"{args.run_dir}: no such run dir; train one first")
    from translator.export import export_saved_model

    info = export_saved_model(args.run_dir, args.out_dir, args.weights, args.beam_size,
                              args.length_penalty, args.n_best, force=args.force)
    print(json.dumps(info))
    return 0


def cmd_download(args) -> int:
    from translator.corpus import resolve_data_root
    from translator.download import download

    dest = Path(args.dest) if args.dest else resolve_data_root(args.data_root)
    with _status(sys.stderr.isatty()) as step:
        files = download(args.name, dest, step=step)
    print(json.dumps({"dataset": args.name, "dest": str(dest), "files": [str(f) for f in files]}))
    return 0


def cmd_serve(args) -> int:
    for flag, value, low in (("--max-batch", args.max_batch, 1),
                             ("--beam-size", args.beam_size, 1),
                             ("--max-sentences", args.max_sentences, 1),
                             ("--max-chars", args.max_chars, 1),
                             ("--batch-wait-ms", args.batch_wait_ms, 0),
                             ("--port", args.port, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise UserError(f"--port must be <= 65535, got {args.port}")
    if args.beam_size is not None and args.beam_size > 16:
        raise UserError(f"--beam-size must be <= 16, got {args.beam_size}")
    from translator.serving.server import bind, serve, url_of

    sock = bind(args.host, args.port)  # a taken port fails now, not after loading the model
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach this server", args.host)
    from translator.config import load_config, with_decode_overrides
    from translator.prepare import RunPaths

    # oneDNN's kernels cache per tensor shape, and a server's batches come in ever new
    # shapes: with them on, the RSS of a float32 model grew 13-19 % over 3,000-10,000
    # requests; off, about 1-5 % at the same speed. decode.dtype=bfloat16 needs them: without
    # oneDNN it decodes slower than float32 (README, "Serving load benchmark"). The user's
    # own setting wins; TensorFlow reads it once, at import.
    if "tensorflow" not in sys.modules:
        config_path = RunPaths(Path(args.run_dir)).config
        dtype = "float32"
        if config_path.is_file():  # otherwise Translator.load says what is missing
            dtype = with_decode_overrides(load_config(config_path), args.overrides).decode.dtype
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1" if dtype == "bfloat16" else "0")
    from translator.serving.app import ServeSettings, create_app, saved_test_scores
    from translator.translator import BEST_WEIGHTS, Translator

    t = Translator.load(args.run_dir, args.weights, args.overrides)
    data = load_config(RunPaths(Path(args.run_dir)).config).data
    settings = ServeSettings(
        src_lang=data.src_lang, tgt_lang=data.tgt_lang, beam_size=args.beam_size,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        max_sentences=args.max_sentences, max_chars=args.max_chars,
        model_info={"run_dir": str(args.run_dir), "weights": args.weights or BEST_WEIGHTS,
                    "test": saved_test_scores(args.run_dir, t.decode.dtype),
                    "decode_dtype": t.decode.dtype,
                    "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")})
    url = url_of(sock)
    log.info("compiling the searches ...")

    def ready() -> None:
        print(f"serving {data.src_lang}-{data.tgt_lang} at {url} (API docs: {url}docs)",
              flush=True)

    if _verbose(args):  # uvicorn's own lines (start-up, one per request) too
        uvicorn_log = logging.getLogger("uvicorn")
        uvicorn_log.addHandler(logging.StreamHandler(sys.stderr))
        uvicorn_log.setLevel(logging.INFO)
    serve(create_app(t, settings), sock, ready, access_log=_verbose(args))
    log.info("stopped")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "translate": cmd_translate,
            "evaluate": cmd_evaluate, "average": cmd_average, "export": cmd_export,
            "download": cmd_download, "serve": cmd_serve}


def _log_to_stderr(level: int) -> None:
    """The package's messages go to the current ``sys.stderr``, one line each; records still
    propagate to the root logger (other libraries' handlers, pytest's caplog)."""
    for handler in [h for h in log.handlers if getattr(h, "translator_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.translator_cli = True
    handler.setLevel(level)  # -q hides info on stderr; the records are still made
    log.addHandler(handler)
    log.setLevel(min(level, logging.INFO))


def _verbose(args) -> bool:
    return bool(args.verbose) or os.environ.get("TRANSLATOR_VERBOSE", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from translator.stderr_filter import filtered_stderr

    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except UserError as exc:
        print(f"translator: error: {exc}", file=sys.stderr)
        return 2
    with filtered_stderr(enabled=not _verbose(args)):
        _log_to_stderr(logging.DEBUG if _verbose(args) else
                       logging.WARNING if args.quiet else logging.INFO)
        try:
            return COMMANDS[args.command](args)
        except UserError as exc:
            print(f"translator: error: {exc}", file=sys.stderr)
            return 2
        except RunError as exc:
            print(f"translator: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:  # translator.errors.Interrupted says where a run stands
            print(f"translator: {str(exc) or 'interrupted'}", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
