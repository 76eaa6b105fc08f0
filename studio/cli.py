"""`minimind-studio` command line: thin argument parsing over engine functions.

Heavy modules (torch, transformers, the engine's trainers) are imported inside the command that needs
them, so `--help` and the studio start instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from engine.api import Run, RunState
from engine.config import STAGE_ORDER, TRAIN_STAGES
from studio.inert import inert

console = Console()
err_console = Console(stderr=True)


def cmd_run(args: argparse.Namespace) -> int:
    from engine.api import runs
    from engine.config import load_preset
    from engine.errors import PresetError

    overrides = list(args.set or []) + world_overrides(args)
    if args.stage:
        overrides.append(f'stages=["{args.stage}"]')
    preset = load_preset(args.preset, overrides)
    runs.check(preset, str(args.preset))
    if args.resume and world_overrides(args):
        raise PresetError("run --resume continues a run as it was frozen; to resume it on another number of "
                          "processes use: minimind-studio resume RUN --nproc-per-node N")
    if args.resume:
        run, _ = runs.reserve_resume(runs.resume_preset(preset))
    else:
        run = runs.new_run(preset)
    return _execute(run, resume=args.resume, detach=args.detach)


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.api import runs

    # Refused now, in the user's terminal (before torch is imported), when the run is live or being started.
    run, notes = runs.reserve_resume(runs.find_run(args.run, args.out_dir), world_overrides(args))
    for note in notes:
        console.print(note, highlight=False, markup=False)
    return _execute(run, resume=True, detach=args.detach)


def _execute(run: Run, resume: bool, detach: bool) -> int:
    """Run (or resume) a prepared run, detached or in the foreground with a progress display."""
    from engine.api import runs

    verb = "resuming" if resume else "run"
    if detach:
        pid = runs.detach(run, resume=resume)
        console.print(f"{verb} [bold]{run.name}[/] detached (pid {pid}); output in {run.dir / 'train.log'}")
        console.print(f"watch: minimind-studio logs -f {run.name}    stop: minimind-studio stop {run.name}")
        print(run.name, file=sys.stderr if sys.stdout.isatty() else sys.stdout)
        return 0
    from studio.progress import RunProgress

    console.print(f"{verb} [bold]{run.name}[/] in {run.dir.parent}")
    with open(run.dir / "train.log", "a", encoding="utf-8") as log, RunProgress(console) as progress:
        state = runs.execute(run, resume=resume, log=log, display=[progress])
    status = run.status()
    console.print(progress.summary(run.name, state, status.get("exit_reason"), run.dir))
    if state == RunState.STOPPED:
        console.print(f"stopped cleanly; continue with: minimind-studio resume {run.name}")
    elif state == RunState.FINISHED:
        console.print(f"outputs in {run.dir}\nchat with it: [bold]minimind-studio chat {run.dir}[/]")
    return 0 if state != RunState.FAILED else 1


def world_overrides(args: argparse.Namespace) -> list[str]:
    """--nproc-per-node and friends as preset overrides of the [distributed] section."""
    flags = {"nproc_per_node": args.nproc_per_node, "nnodes": args.nnodes, "node_rank": args.node_rank,
             "rdzv_endpoint": args.rdzv_endpoint, "strategy": args.strategy}
    return [f"distributed.{key}={value if key != 'rdzv_endpoint' else repr(value)}"
            for key, value in flags.items() if value is not None]


def add_world_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (torchrun; the preset's [distributed] section)")
    group.add_argument("--nproc-per-node", metavar="N|auto", help="processes on this node, one per GPU (auto: all visible GPUs)")
    group.add_argument("--nnodes", type=int, metavar="M", help="machines taking part")
    group.add_argument("--node-rank", type=int, metavar="K", help="this machine's number, 0..M-1 (0 writes the run directory)")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port, the same on every node")
    group.add_argument("--strategy", choices=["ddp", "fsdp"], help="ddp: whole model per GPU; fsdp: sharded (FSDP2)")


def cmd_stop(args: argparse.Namespace) -> int:
    from engine.api import runs

    console.print(runs.stop(runs.find_run(args.run, args.out_dir)).message)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from engine.api import runs

    run_dir = runs.find_run(args.run, args.out_dir)
    if not args.yes:
        try:
            answer = console.input(f"delete {run_dir} with its checkpoints and logs? This cannot be undone. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            console.print("not deleted")
            return 1
    runs.delete(run_dir)
    console.print(f"deleted {run_dir.name}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.api import runs
    from studio.runs_table import runs_table

    summaries = runs.runs(args.out_dir)
    if not summaries:
        console.print(f"no runs under {args.out_dir} yet; start one with: minimind-studio run tiny")
        return 0
    console.print(runs_table(summaries))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from engine.api import runs
    from studio.logs_view import show_logs

    show_logs(runs.find_run(args.run, args.out_dir), follow=args.follow, console=console)
    return 0


CHAT_HELP = ("commands: /clear (forget the conversation), /system TEXT (set the system prompt), "
             "/tools FILE (JSON list of function specs) or /tools off, /result TEXT or /result @FILE (answer "
             "the model's tool call), /think on|off (templates with enable_thinking), /quit. Ctrl-C stops a reply; "
             "at the prompt it leaves")


def cmd_chat(args: argparse.Namespace) -> int:
    from functools import partial

    from engine.api.chat import Sampling, open_chat, read_tool_specs
    from studio.chat_console import chat_turn, print_note, print_tools_command, result_command, think_command

    tools = read_tool_specs(args.tools) if args.tools else None  # a bad file fails before the slow model load
    session = open_chat(args.checkpoint, args.out_dir, device=args.device, system_prompt=args.system, tools=tools)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens, seed=args.seed)
    ckpt = session.checkpoint
    mode = "chat (SFT)" if session.mode == "chat" else "plain continuation (pretrain checkpoint)"
    if session.takes_thinking:
        mode += ", its template has a thinking switch (/think on|off)"
    console.print(f"[bold]{escape(inert(str(ckpt.path)))}[/] step {ckpt.step}: {mode}. {CHAT_HELP}", highlight=False)
    while True:
        try:
            text = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt leaves; mid-reply, see chat_turn
            console.print()
            return 0
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/clear":
            session.clear()
            console.print("[dim](conversation cleared)[/]")
            continue
        if text.startswith("/system"):
            session.system_prompt = text.removeprefix("/system").strip() or None
            session.clear()
            print_note(console, f"(system prompt: {session.system_prompt!r}; conversation cleared)")
            continue
        if text.strip().startswith("/tools"):
            print_tools_command(console, text.strip().removeprefix("/tools"), session)
            continue
        if text.strip().startswith("/think"):
            ok, line = think_command(text.strip().removeprefix("/think"), session)
            print_note(console, line, ok)
            continue
        if text.strip().startswith("/result"):
            outcome, line = result_command(text.strip().removeprefix("/result"), session)
            if outcome != "go":
                print_note(console, line, ok=outcome == "waiting")
                continue
            chat_turn(console, session, partial(session.continue_reply, sampling))
        elif text.strip():
            chat_turn(console, session, partial(session.reply, text, sampling))


def cmd_export(args: argparse.Namespace) -> int:
    from engine.api.export import export

    done = export(args.checkpoint, args.format, args.dtype, Path(args.dir), args.out_dir)
    console.print(f"exported {done.source} (step {done.step}) to [bold]{done.written}[/] ({done.dtype}, {done.size}): "
                  f"{done.how_to_use}", highlight=False)
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    from engine.api.data import sample_jsonl

    report = sample_jsonl(Path(args.input), Path(args.output), args.target_mb, args.seed)
    mib = 1024 * 1024
    console.print(f"kept {report.kept_lines:,} of {report.source_lines:,} samples, {report.kept_bytes / mib:.2f} MiB "
                  f"of {report.source_bytes / mib:.2f} MiB -> {report.out_path}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from engine.api.estimate import detect_target, estimate, parse_bytes
    from engine.config import load_preset
    from studio.estimate_view import estimate_renderable

    preset = load_preset(args.preset, list(args.set or []) + world_overrides(args))
    gpu_mem = parse_bytes(args.gpu_mem) if args.gpu_mem else None
    target = detect_target(preset, device=args.device, gpu_name=args.gpu, gpu_mem_bytes=gpu_mem, dtype=args.dtype)
    result = estimate(preset, target, stage=args.stage, calibrate=args.calibrate, calibrate_steps=args.calibrate_steps,
                      on_calibrate=lambda stage, steps: console.print(f"calibrating {stage}: {steps} real training steps ..."))
    console.print(estimate_renderable(result.title, result.target, result.stages, result.measured))
    return 0 if result.fits is not False else 1


def build_parser() -> argparse.ArgumentParser:
    from engine.api.export import FORMATS, dtype_help

    parser = argparse.ArgumentParser(
        prog="minimind-studio",
        description="Train small Llama-style LLMs from scratch: tokenizer -> pretrain -> SFT -> chat.",
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a preset's stages (tokenizer -> pretrain -> sft) in the foreground")
    run.add_argument("preset", help="a preset file (presets/tiny.toml) or a built-in preset name (tiny)")
    run.add_argument("--stage", choices=STAGE_ORDER, help="run only this stage")
    run.add_argument("--resume", action="store_true", help="continue the newest run of this preset from its checkpoints")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a preset field (repeatable)")
    run.add_argument("--detach", action="store_true", help="run in the background, immune to the terminal closing; prints the run id")
    add_world_flags(run)
    run.set_defaults(handler=cmd_run)

    estimate = sub.add_parser("estimate", help="memory, fit, largest batch and time of a preset before launching it")
    estimate.add_argument("preset", help="a preset file or a built-in preset name")
    estimate.add_argument("--stage", choices=TRAIN_STAGES, help="only this stage")
    estimate.add_argument("--device", help="cpu or cuda (default: the preset's, as training would resolve it)")
    estimate.add_argument("--gpu", help="a GPU by name (e.g. 'GTX 1650', 3090, A100): its memory and bf16 support")
    estimate.add_argument("--gpu-mem", help="GPU memory to plan for, e.g. 8GiB (implies --device cuda)")
    estimate.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="override runtime.dtype")
    estimate.add_argument("--calibrate", action="store_true", help="measure throughput and peak memory with real steps here")
    estimate.add_argument("--calibrate-steps", type=int, default=20, metavar="N")
    estimate.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a preset field (repeatable)")
    add_world_flags(estimate)
    estimate.set_defaults(handler=cmd_estimate)

    runs = sub.add_parser("runs", help="list runs with their state, stage, step, loss and throughput")
    runs.add_argument("--out-dir", default="runs")
    runs.set_defaults(handler=cmd_runs)

    logs = sub.add_parser("logs", help="show a run's metrics, events and log tail")
    logs.add_argument("run", help="run id (or a unique part of it) or run directory")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    logs.add_argument("--out-dir", default="runs")
    logs.set_defaults(handler=cmd_logs)

    stop = sub.add_parser("stop", help="ask a run to checkpoint and exit cleanly")
    stop.add_argument("run")
    stop.add_argument("--out-dir", default="runs")
    stop.set_defaults(handler=cmd_stop)

    delete = sub.add_parser("delete", help="delete a run that is not running, with its checkpoints and logs")
    delete.add_argument("run")
    delete.add_argument("--yes", action="store_true", help="do not ask first")
    delete.add_argument("--out-dir", default="runs")
    delete.set_defaults(handler=cmd_delete)

    resume = sub.add_parser("resume", help="continue a stopped, failed or crashed run from its newest checkpoint")
    resume.add_argument("run")
    resume.add_argument("--detach", action="store_true")
    add_world_flags(resume)
    resume.add_argument("--out-dir", default="runs")
    resume.set_defaults(handler=cmd_resume)

    chat = sub.add_parser("chat", help="streaming terminal chat with a run or checkpoint")
    chat.add_argument("checkpoint", help="a run dir or id, a checkpoint dir, or an exported HF dir")
    chat.add_argument("--system", help="system prompt (SFT checkpoints)")
    chat.add_argument("--tools", metavar="FILE", help="JSON list of function specs offered in the system turn")
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-k", type=int, default=0)
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--repetition-penalty", type=float, default=1.1)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    chat.add_argument("--out-dir", default="runs", help="where run ids are looked up")
    chat.set_defaults(handler=cmd_chat)

    export = sub.add_parser("export", help="write a checkpoint in Hugging Face format, or as GGUF for llama.cpp / Ollama")
    export.add_argument("checkpoint", help="a run dir or id, a checkpoint dir, or an exported HF dir")
    export.add_argument("dir", help="output directory")
    export.add_argument("--format", choices=list(FORMATS), default="hf",
                        help="hf: a transformers model directory; gguf: model.gguf + an Ollama Modelfile")
    export.add_argument("--dtype", help=dtype_help())
    export.add_argument("--out-dir", default="runs", help="where run ids are looked up")
    export.set_defaults(handler=cmd_export)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    sample = data.add_parser("sample", help="random lines of a jsonl file up to a size budget (streaming)")
    sample.add_argument("input")
    sample.add_argument("output")
    sample.add_argument("--target-mb", type=float, required=True, help="size budget in MiB")
    sample.add_argument("--seed", type=int, default=42)
    sample.set_defaults(handler=cmd_data_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        from studio.app import (
            StudioApp,  # imported here: the other commands never pay for textual
        )

        StudioApp().run()
        return 0
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as error:
        from engine.api.errors import user_error
        from engine.errors import USER_ERROR_EXIT

        # Only the engine's own errors are written for the user, and a full disk: what to free, also where it struck
        # outside a run or struck again as a log was closed. Anything else is a bug and keeps its traceback.
        shown = user_error(error)
        if shown is None or os.environ.get("MINIMIND_DEBUG"):
            raise
        # Text, not markup: a message naming `[pretrain]` or a path with brackets prints as written.
        err_console.print(f"[red]error:[/] {escape(inert(str(shown)))}", highlight=False)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
