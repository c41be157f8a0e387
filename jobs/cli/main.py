"""`sfp-label`: the command line. Argument parsing, wiring, and the one mapping from errors to exit codes;
the work lives in `jobs.jobfile`, `jobs.tools` and `pipeline`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sfp_core import BusyError, RetryableError, UserError

from .exitcodes import ExitCode, exit_codes_help
from .progress import DEFAULT_LINE_EVERY_S
from .quiet import LOG_FORMAT, quiet_warnings, without_ray_core_lines

if TYPE_CHECKING:
    from pipeline import LabelledOutput, RunSummary

MOSTLY_IGNORED = 0.5  # export warns when the thresholds leave more than this share of pixels unlabelled

EXAMPLES = """examples:
  sfp-label run jobs/demo.yaml --set model.weights=random     label examples/images into out/demo, offline
  sfp-label run jobs/voc21.yaml --set input.uri=s3://bucket/voc/JPEGImages --set output.uri=s3://bucket/labels/voc21
  sfp-label run jobs/bucket.yaml --dry-run                    show the job as it would run, run nothing
  sfp-label validate jobs/bucket.yaml                         check a job file (exit 2 and the field if bad)
  sfp-label show out/demo                                     counts, classes, outlier statistics
  sfp-label show s3://bucket/labels/voc21 -o endpoint_url=http://127.0.0.1:8333 --json
  sfp-label export out/demo out/demo-voc --ignore-below 0.12  masks for a trainer (VOC / mmseg layout)
  sfp-label eval out/voc21 --gt data/VOCdevkit/VOC2012/SegmentationClass   mIoU / mAcc / aAcc per class
  sfp-label render out/demo out/demo-html --limit 50          overlays, outlier maps and an index.html
  sfp-label export out/demo out/demo-coco.json --format coco  COCO JSON, one RLE annotation per class and image
  sfp-label export out/demo out/demo-yolo --format yolo --min-area 64   Ultralytics YOLO segmentation polygons
  ray job submit --working-dir . --entrypoint-resources '{"driver": 1}' -- sfp-label run jobs/voc21.yaml \
      --set input.uri=s3://bucket/voc/JPEGImages --set output.uri=s3://bucket/labels/voc21 --no-progress
                                                              on a Ray cluster (pip install -e ".[cluster]")

Job files: YAML (see jobs/*.yaml); ${VAR} and ${VAR:-default} take non-secret values from the
environment; credentials are refused in job files and come from the environment or ~/.aws etc.
"""


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in 0..1")
    return value


def _pixels(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of pixels")
    return value


def _class_threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=P, e.g. person=0.7")
    return name, _probability(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfp-label",
        description="Label image corpora with SFP (training-free open-vocabulary segmentation) on Ray.",
        epilog=f"{EXAMPLES}\n{exit_codes_help()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=exit_codes_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sub.add_argument("job", type=Path, metavar="JOB.yaml")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a job key, e.g. --set model.weights=random --set resources.actors=[1,4] (repeatable)",
        )  # fmt: skip
        return sub

    run = job_command("run", "run a labelling job (locally, or on the Ray cluster in RAY_ADDRESS)")
    run.add_argument("--dry-run", action="store_true", help="print the job as it would run and exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    run.add_argument(
        "--progress-every", type=float, default=DEFAULT_LINE_EVERY_S, metavar="S",
        help=f"without a terminal, a progress line every S seconds (default {DEFAULT_LINE_EVERY_S:g})",
    )  # fmt: skip
    run.add_argument("--ray-progress", action="store_true", help="Ray Data's per-operator bars (debugging)")
    run.add_argument("--verbose", action="store_true", help="Ray's, the workers' and our INFO logs too")
    run.add_argument(
        "--retry-errors", action="store_true",
        help="label every error row again, not only unreadable files (= --set output.retry_errors=all)",
    )  # fmt: skip
    validate = job_command(
        "validate", "check a job and what it names (input, output, weights) without running it, in seconds"
    )
    validate.add_argument("--offline", action="store_true", help="check the file only: no storage or network")

    def output_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=exit_codes_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sub.add_argument("output", metavar="OUTPUT_URI", help="a finished job's output.uri")
        sub.add_argument(
            "-o", "--storage-option", dest="storage_options", action="append", default=[], metavar="KEY=VALUE",
            help="fsspec storage option, e.g. -o endpoint_url=http://127.0.0.1:8333 (never credentials)",
        )  # fmt: skip
        return sub

    show = output_command("show", "summarise a finished output: counts, classes, outlier statistics")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.add_argument("--errors", action="store_true", help="list every error row: image id and reason")
    export = output_command(
        "export",
        "write masks as PNGs in the VOC / mmsegmentation folder layout, as one COCO JSON (RLE), or as "
        "Ultralytics YOLO segmentation polygons",
    )
    export.add_argument(
        "directory", type=Path, metavar="DEST", help="a folder (voc, yolo); a .json file or a folder (coco)"
    )
    export.add_argument(
        "--format", choices=("voc", "coco", "yolo"), default="voc",
        help="voc (default): SegmentationClass/*.png; coco: one annotation per class and image, masks as RLE; "
        "yolo: images/ (links to the inputs), labels/*.txt (one polygon per region and class), data.yaml",
    )  # fmt: skip
    export.add_argument(
        "--ignore-below", type=_probability, metavar="P",
        help="set pixels whose stored confidence is below P to the ignore index (needs output.confidence: true)",
    )  # fmt: skip
    export.add_argument(
        "--ignore-below-class", action="append", default=[], type=_class_threshold, metavar="NAME=P",
        help="the threshold of one class (its display name), instead of --ignore-below's (repeatable)",
    )  # fmt: skip
    export.add_argument("--ignore-index", type=int, default=255, help="voc: label of ignored pixels (default 255)")
    export.add_argument("--split", default="train", help="name of the id list, ImageSets/Segmentation/SPLIT.txt")
    export.add_argument(
        "--min-area", type=_pixels, default=16, metavar="PX",  # = tools.yolo.DEFAULT_MIN_AREA, not imported: cv2
        help="yolo: leave out regions (8-connected, one class) under PX pixels (default 16)",
    )  # fmt: skip
    _add_eval_and_render(output_command)
    output_command("upgrade", "move an output written by sfp-label 0.1 into the current layout (labels nothing)")
    compact = output_command(
        "compact", "rewrite the current rows into files of --rows-per-file rows, as a new version (labels nothing)"
    )
    compact.add_argument(
        "--rows-per-file", type=int, metavar="N",
        help="rows in one data file, at most (default: the default of output.rows_per_file)",
    )  # fmt: skip
    return parser


def _add_eval_and_render(output_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    from ..tools.labelmaps import FORMATS

    formats = "; ".join(f"{f.name}: {f.about}" for f in FORMATS.values())
    evaluate = output_command("eval", "score the masks against ground-truth label maps (mIoU, mAcc, aAcc)")
    evaluate.add_argument("--gt", required=True, metavar="DIR_OR_URI", help="folder of label maps (-o applies too)")
    evaluate.add_argument("--vocab", type=Path, metavar="FILE", help="class names (default: the run manifest's)")
    evaluate.add_argument("--gt-format", choices=list(FORMATS), default="voc", help=f"(default voc) {formats}")
    evaluate.add_argument("--gt-suffix", metavar="SUFFIX", help="label file = <image stem>SUFFIX (default per format)")
    evaluate.add_argument("--out", type=Path, default=Path(), metavar="DIR", help="for the JSON and CSV (default .)")
    render = output_command("render", "PNG overlays, outlier maps and an index.html to look at the masks")
    render.add_argument("directory", type=Path, metavar="DIR")
    render.add_argument("--limit", type=int, default=100, metavar="N", help="images to render (0 = all; default 100)")
    render.add_argument("--max-side", type=int, default=640, metavar="PX", help="picture size cap (default 640)")


def _run(args: argparse.Namespace) -> ExitCode:
    from ..jobfile import load_job
    from ..jobfile.launch import check_job

    overrides = [*args.overrides, *(["output.retry_errors=all"] if getattr(args, "retry_errors", False) else [])]
    job = load_job(args.job, overrides)
    if args.command == "validate":
        check_job(job, offline=args.offline)
        print(f"ok: {job.describe()}" + (" (file only: --offline)" if args.offline else ""))
        return ExitCode.OK
    if args.dry_run:
        print(f"# {job.describe()}\n# dry run: nothing was labelled")
        print(yaml.safe_dump(job.effective(), sort_keys=False, default_flow_style=None), end="")
        return ExitCode.OK
    from pipeline import RunDisplay

    from ..jobfile.launch import run_job
    from .progress import ProgressDisplay

    shown = None if args.no_progress else ProgressDisplay(line_every_s=args.progress_every)
    display = RunDisplay(on_progress=shown, ray_progress=args.ray_progress, verbose=args.verbose)
    filtered = contextlib.nullcontext() if args.verbose else without_ray_core_lines()
    try:
        with filtered:
            summary = run_job(job, display)
    finally:
        if shown is not None:
            shown.close()
    print(summary.one_line())
    print(f"manifest: {summary.manifest_uri}")
    return _exit_code(summary)


def _exit_code(summary: RunSummary) -> ExitCode:
    """A run with error rows finished, but not fully: scripts must be able to tell."""
    return ExitCode.PARTIAL if summary.error else ExitCode.OK


def _output(args: argparse.Namespace) -> ExitCode:
    from pipeline import LabelledOutput

    from ..tools.options import parse_storage_options

    options = parse_storage_options(args.storage_options)
    if args.command == "upgrade":
        from pipeline import upgrade_output

        done = upgrade_output(args.output, options)
        left_out = f"; {done.duplicates} rows of images it already held were left out" if done.duplicates else ""
        print(f"upgraded {args.output}: its rows are in {done.pointer.data}/, described by README.md{left_out}")
        return ExitCode.OK
    if args.command == "compact":
        from pipeline import DEFAULT_ROWS_PER_FILE, compact_output

        done = compact_output(args.output, options, args.rows_per_file or DEFAULT_ROWS_PER_FILE)
        if done.after == done.before:
            print(f"{args.output}: {done.files_before} files of {done.rows} rows; nothing to compact")
        else:
            files = f"{done.files_before} -> {done.files_after} files"
            print(f"compacted {args.output}: {files}, {done.rows} rows, now in {done.after}/")
        return ExitCode.OK
    output = LabelledOutput.open(args.output, options)
    if args.command == "show":
        from ..tools.show import error_rows, format_summary, summarize

        if args.errors:
            listed = False
            for image_id, reason in error_rows(output):
                print(f"{image_id}\t{reason}")
                listed = True
            if not listed:  # on stderr: stdout stays the list, empty, for scripts
                print(f"{args.output}: no error rows", file=sys.stderr)
            return ExitCode.OK
        summary = summarize(output)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return ExitCode.OK
    if args.command in ("eval", "render"):
        return _eval_or_render(args, output, options)
    thresholds = dict(args.ignore_below_class)
    if args.format == "coco":
        from ..tools.coco import export_coco

        report = export_coco(output, args.directory, ignore_below=args.ignore_below, ignore_below_class=thresholds)
    elif args.format == "yolo":
        from ..tools.yolo import export_yolo

        report = export_yolo(
            output, args.directory, min_area=args.min_area, ignore_below=args.ignore_below,
            ignore_below_class=thresholds,
        )  # fmt: skip
    else:
        from ..tools.export import export

        report = export(
            output, args.directory, ignore_below=args.ignore_below, ignore_below_class=thresholds,
            ignore_index=args.ignore_index, split=args.split,
        )  # fmt: skip
    print(report.one_line())
    for line in report.unsure.class_lines():
        print(line)
    if report.unsure.share > MOSTLY_IGNORED:
        print(
            f"sfp-label export: warning: the confidence thresholds left {report.unsure.share:.0%} of the "
            "pixels unlabelled; lower ones keep more of the masks",
            file=sys.stderr,
        )
    return ExitCode.OK


def _eval_or_render(args: argparse.Namespace, output: LabelledOutput, storage_options: dict[str, Any]) -> ExitCode:
    if args.command == "eval":
        from ..tools.destination import writable_folder
        from ..tools.evaluate import GroundTruth, class_names, evaluate
        from ..tools.labelmaps import FORMATS

        writable_folder(args.out)  # before the scoring, not when its files are written
        gt = GroundTruth.open(args.gt, FORMATS[args.gt_format], args.gt_suffix, storage_options)
        report = evaluate(output, gt, class_names(output, args.vocab))
        print(report.table())
        metrics, per_class = report.write(args.out)
        print(f"wrote {metrics} and {per_class}")
        return ExitCode.OK
    from ..tools.render import render

    rendered = render(
        output, args.directory, limit=args.limit or None, max_side=args.max_side, storage_options=storage_options
    )
    print(rendered.one_line())
    return ExitCode.OK


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program stands so it unwinds like Ctrl-C: commits kept, lease released."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sfp-label` console script; returns the exit code (see --help)."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    if not verbose:
        quiet_warnings()
    try:
        return int(_run(args) if args.command in ("run", "validate") else _output(args))
    except SystemExit as exc:  # while `ray.init` runs, Ray's own SIGTERM handler calls sys.exit(15)
        if exc.code != signal.SIGTERM:
            raise
        code = _report(Terminated(), args.command)  # the lease was released on the way out; nothing ran yet
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))  # a Ray core stopped halfway through connecting aborts in its exit handlers
    except BrokenPipeError:  # `sfp-label show OUT | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return int(ExitCode.OK)
    except (Exception, KeyboardInterrupt) as exc:  # the one place where errors become exit codes
        return int(_report(exc, args.command))


def _report(exc: BaseException, command: str) -> ExitCode:
    """Say what went wrong in the words the error's class calls for, and choose the exit code."""
    prefix = "sfp-label" if command in ("run", "validate") else f"sfp-label {command}"
    if isinstance(exc, Terminated):
        print(f"{prefix}: terminated; finished files are kept and the next run resumes", file=sys.stderr)
        return ExitCode.TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prefix}: interrupted; finished files are kept and the next run resumes", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if isinstance(exc, BusyError):
        print(f"{prefix}: busy: {exc}", file=sys.stderr)
        return ExitCode.BUSY
    if isinstance(exc, RetryableError):
        print(f"{prefix}: {exc}", file=sys.stderr)
        print(
            f"{prefix}: failed (exit 4); run it again once the storage or cluster is back: it resumes", file=sys.stderr
        )
        return ExitCode.CRASH
    if isinstance(exc, UserError):
        render = getattr(exc, "render", None)
        print(render() if callable(render) else f"{prefix}: {exc}", file=sys.stderr)
        return ExitCode.BAD_JOB
    traceback.print_exception(exc)
    print(f"{prefix}: crashed (exit 4); the traceback above says where", file=sys.stderr)
    return ExitCode.CRASH


if __name__ == "__main__":
    sys.exit(main())
