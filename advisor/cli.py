"""The `advisor` command: one parser, each subcommand handled by the module that owns the work.

Subcommand handlers are imported only when chosen, so `advisor execute` never imports textual and
`advisor plan` never imports torch. A `UserError` anywhere prints its lines and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

from advisor.errors import UserError

# subcommand → "module:function" taking the parsed arguments and returning an exit code
HANDLERS = {
    "list": "advisor.cli:cmd_list",
    "schema": "advisor.cli:cmd_schema",
    "plan": "advisor.planner_cli:cmd_plan",
    "simulate": "simulator.command:cmd_simulate",
    "execute": "backend.command:cmd_execute",
    "compare": "advisor.compare:cmd_compare",
    "profile": "advisor.profile:cmd_profile",
    "calibrate": "advisor.calibrate:cmd_calibrate",
    "tune": "advisor.tune:cmd_tune",
    "tui": "tui.app:cmd_tui",
}


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):  # nan, inf, and a number too large for a float (1e400)
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive (1 or more)")
    return value


def non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 0")
    return value


def fraction(text: str) -> float:
    value = _finite_number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must lie in [0, 1]")
    return value


def non_negative_float(text: str) -> float:
    value = _finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 0")
    return value


HARDWARE_HELP = "shipped or user profile name (advisor list), or a hardware profile JSON"


def batch_or_search(text: str) -> int | str:
    word = text.strip().lower()
    return word if word in ("max", "best") else positive_int(text)


def add_workload_arguments(parser: argparse.ArgumentParser, hardware_help: str = HARDWARE_HELP,
                           batch_max: bool = False) -> None:
    parser.add_argument("--model", required=True, help="shipped name, model JSON, or HF checkpoint folder")
    parser.add_argument("--hardware", required=True, help=hardware_help)
    if batch_max:
        parser.add_argument("--batch", type=batch_or_search, required=True,
                            help="sequences decoded together; `max`: the largest batch that fits (up to 4096); "
                            "`best`: of 1, 2, 3, 4, 6, 8, 12, … up to that, the one with the most decode tokens/s")
    else:
        parser.add_argument("--batch", type=positive_int, required=True,
                            help="sequences decoded together (a number: `max` and `best` are advisor plan's)")
    parser.add_argument("--prompt-len", type=positive_int, required=True, help="prompt tokens per sequence")
    parser.add_argument("--gen-len", type=positive_int, required=True, help="tokens generated per sequence")


def add_plan_choices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", choices=["row", "column"], default=None,
                        help="row (latency) or column (throughput); default follows --objective")
    parser.add_argument("--objective", choices=["latency", "throughput"], default=None,
                        help="what the plan minimises: time per step (latency) or per token over the "
                        "batch (throughput); default follows --schedule")
    parser.add_argument("--gpu-batches", type=positive_int, default=None,
                        help="GPU batches the batch is split into (column: each step runs them all; row: "
                        "they run one after another); default: chosen among the batch's divisors")
    parser.add_argument("--weights-on-gpu", type=fraction, default=None,
                        help="fraction of layers whose weights stay on the GPU; default: chosen")
    parser.add_argument("--gpu-kv-budget", type=non_negative_float, default=None, metavar="GB",
                        help="GPU memory the KV cache may use, GB; 0 offloads all of it; default: as many "
                        "layers' KV as fit beside everything else")
    parser.add_argument("--split", type=non_negative_int, default=None,
                        help="force this split (tokens recomputed) for every step")
    parser.add_argument("--chunks", type=positive_int, default=None,
                        help="activation chunks per layer (recomputation starts as each lands); default: chosen")
    parser.add_argument("--cost-model", choices=["pipelined", "paper"], default="pipelined",
                        help="pipelined: layers overlap as the runtime issues them (default); paper: the KVPR "
                        "paper's form, each layer T_act + max(T_recompute, T_kv) then its other compute")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None,
                        help="default: the model's own; fp32 on a CPU profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advisor",
        description="Plan, simulate and execute LLM decoding with the KV cache offloaded to CPU memory "
        "(KVPR-style partial recomputation).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="shipped and user profiles")
    p.add_argument("kind", nargs="?", choices=["models", "hardware"], default=None, help="default: both")

    p = sub.add_parser("schema", help="print a document's JSON schema")
    p.add_argument("name", choices=["plan", "hardware", "model", "trace"], help="the document kind")

    p = sub.add_parser("plan", help="solve for the split and write a plan")
    add_workload_arguments(p, batch_max=True)
    add_plan_choices(p)
    p.add_argument("-o", "--output", default="plan.json", help="where to write the plan (default: plan.json)")
    p.add_argument("--json", action="store_true", help="print the plan's workload, splits and figures as JSON")

    p = sub.add_parser("simulate", help="predicted trace of a plan")
    p.add_argument("plan", help="a plan JSON (advisor plan)")
    p.add_argument("-o", "--output", default=None, help="write the predicted trace here")
    p.add_argument("--chrome", default=None, help="write a Chrome/Perfetto trace here")
    p.add_argument("--layers", type=positive_int, default=4, help="layers shown in the text timeline")

    p = sub.add_parser("execute", help="run a plan on the GPU (or CPU) and measure it")
    p.add_argument("plan", help="a plan JSON (advisor plan)")
    p.add_argument("-o", "--output", required=True, help="where to write the measured trace")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda when available, else the CPU mode (fp32, in order)")
    p.add_argument("--checkpoint", default=None, help="local Hugging Face checkpoint folder")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-ids", default=None, help="JSON list (or list of lists) of token ids")
    prompt.add_argument("--prompt", default=None, help="prompt text (needs a tokenizer in --checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt (default: 0)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=None,
                   help="first decode steps left out of the figures; default: 2 on a GPU with 6 or more "
                   "decode steps, else 1 (0 with a single step)")
    p.add_argument("--calibrate", default=None, metavar="OUT",
                   help="refit the plan's hardware profile from this run and write it to OUT")
    p.add_argument("--no-timing-overhead", action="store_true",
                   help="skip rerunning a few decode steps to measure what the timing events cost")

    p = sub.add_parser("compare", help="predicted against measured")
    p.add_argument("plan", help="the plan JSON the trace was measured for")
    p.add_argument("measured", help="a measured trace (advisor execute)")
    p.add_argument("--predicted", default=None,
                   help="a predicted trace (advisor simulate -o); default: simulate the plan now")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--chrome", default=None,
                   help="write both timelines as a Chrome trace here (default: MEASURED.compare.chrome.json "
                   "beside the measured trace)")

    p = sub.add_parser("profile", help="measure this machine into a hardware profile")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda when available, else the CPU mode")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and repeats: copies up to 64 MiB instead of 1 GiB")
    p.add_argument("-o", "--output", required=True, help="where to write the hardware profile")
    p.add_argument("--name", default=None, help="the profile's name (default: HOST-DEVICE)")

    p = sub.add_parser("calibrate", help="refit a hardware profile from measured traces")
    p.add_argument("measured", nargs="+", help="measured traces (advisor execute)")
    p.add_argument("--hardware", required=True, help="the profile to refit: a name or a JSON")
    p.add_argument("-o", "--output", required=True, help="where to write the refitted profile")
    p.add_argument("--plan", action="append", default=None,
                   help="plan of each measured trace when it is not beside it")

    p = sub.add_parser("tune", help="profile, plan, execute, calibrate, re-plan")
    add_workload_arguments(p, HARDWARE_HELP + "; `measure` (or a JSON path not there yet, or a profile of "
                           "another device kind) profiles this machine first, quickly (as advisor profile --quick; what "
                           "tuning calibrates from it goes to --profile-output)")
    add_plan_choices(p)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda when available, else the CPU mode")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="most rounds of execute, calibrate, re-plan (default: 3)")
    p.add_argument("--steps", type=positive_int, default=4, help="decode steps executed per candidate (default: 4)")
    p.add_argument("-o", "--output", default="tuned-plan.json", help="the final plan (default: tuned-plan.json)")
    p.add_argument("--profile-output", default="tuned-hardware.json",
                   help="the calibrated profile (default: tuned-hardware.json)")

    p = sub.add_parser("tui", help="explore plans interactively")
    p.add_argument("--plan", default=None, help="start from this plan JSON (default: the built-in workload)")
    p.add_argument("--measured", default=None, help="overlay this measured trace")
    p.add_argument("--export", default="plan.json", help="where e writes the chosen plan (default: plan.json)")
    return parser


def cmd_list(args) -> int:
    from advisor.catalog import available, load_hardware, load_model

    kinds = [args.kind] if args.kind else ["models", "hardware"]
    for kind in kinds:
        print(f"{kind}:")
        for origin, name, path in available(kind):
            try:
                doc = load_model(str(path)) if kind == "models" else load_hardware(str(path))
            except UserError as error:
                print(f"  {name:18s} {origin:8s} invalid: {error.lines[0]}")
                continue
            if kind == "models":
                what = (f"{doc.family}, {doc.num_layers} layers, hidden {doc.hidden}, "
                        f"{doc.num_heads} heads / {doc.num_kv_heads} KV heads")
            else:
                what = doc.description
            print(f"  {name:18s} {origin:8s} {what}")
    return 0


def cmd_schema(args) -> int:
    from advisor.documents import json_schema

    print(json.dumps(json_schema(args.name), indent=1))
    return 0


class _StdoutThatOutlivesItsReader:
    """Standard output that goes quiet when its reader goes away (`advisor compare ... | head`):
    the command still finishes its work (the files it writes) instead of dying of a broken pipe."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered then flushes into nothing
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _StdoutThatOutlivesItsReader(sys.stdout)
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, function_name = HANDLERS[args.command].split(":")
    try:
        # imported inside the protected region: importing torch takes a second, and Ctrl-C then is
        # an interruption like any other
        try:
            handler = getattr(importlib.import_module(module_name), function_name)
        except ModuleNotFoundError as missing:  # e.g. textual on a GPU box that only executes plans
            print(f"advisor {args.command}: needs the Python package {missing.name!r}, which is not installed "
                  f"here (pip install -e . installs what every command needs)", file=sys.stderr)
            return UserError.exit_code
        return int(handler(args) or 0)
    except UserError as error:
        for line in error.lines:
            print(f"advisor {args.command}: {line}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"advisor {args.command}: interrupted", file=sys.stderr)
        return 130
