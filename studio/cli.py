"""`minimind-studio` command line: thin argument parsing over engine functions.

Heavy modules (torch, transformers, the engine's trainers) are imported inside the command that needs
them, so `--help` and the studio start instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from engine.chat.inert import inert
from engine.errors import EngineError
from engine.runs.state import RunState

console = Console()
err_console = Console(stderr=True)


def cmd_run(args: argparse.Namespace) -> int:
    from engine.config import load_preset
    from engine.errors import PresetError
    from engine.runs.pipeline import preflight
    from engine.runs.run_dir import create_run, latest_run_of

    overrides = list(args.set or []) + world_overrides(args)
    if args.stage:
        overrides.append(f'stages=["{args.stage}"]')
    preset = load_preset(args.preset, overrides)
    preflight(preset, str(args.preset))
    if args.resume and world_overrides(args):
        raise PresetError("run --resume continues a run as it was frozen; to resume it on another number of "
                          "processes use: minimind-studio resume RUN --nproc-per-node N")
    if args.resume:
        run_dir = latest_run_of(preset.name, preset.out_dir)
        if run_dir is None:
            err_console.print(f"[red]error:[/] no earlier run of preset {preset.name!r} under {preset.out_dir} to resume")
            return 2
    else:
        run_dir = create_run(preset)
    return _execute(run_dir, resume=args.resume, detach=args.detach)


def _execute(run_dir: Path, resume: bool, detach: bool, prepare: Callable[[], None] | None = None) -> int:
    """Run (or resume) a prepared run directory, detached or in the foreground with a progress display.
    `prepare` runs once a resume has reserved the run (nothing else can start it meanwhile)."""
    from engine.events import plain_log_listener
    from engine.runs.manage import reserve_start
    from engine.runs.run_dir import launch_detached

    verb = "resuming" if resume else "run"
    if resume:  # refuse now, in the user's terminal (before importing torch), a run that is live or being started
        reserve_start(run_dir)
    if prepare is not None:
        prepare()
    if detach:
        pid = launch_detached(run_dir, resume=resume)
        console.print(f"{verb} [bold]{run_dir.name}[/] detached (pid {pid}); output in {run_dir / 'train.log'}")
        console.print(f"watch: minimind-studio logs -f {run_dir.name}    stop: minimind-studio stop {run_dir.name}")
        print(run_dir.name, file=sys.stderr if sys.stdout.isatty() else sys.stdout)
        return 0
    from engine.runs.pipeline import run_pipeline
    from studio.progress import RunProgress, summary_table

    console.print(f"{verb} [bold]{run_dir.name}[/] in {run_dir.parent}")
    if _world_of(run_dir) > 1:
        return _execute_distributed(run_dir, resume)
    with open(run_dir / "train.log", "a", encoding="utf-8") as log, RunProgress(console) as progress:
        result = run_pipeline(run_dir, resume=resume, listeners=[progress, plain_log_listener(log)])
    console.print(summary_table(result))
    _print_next_step(run_dir, result.state)
    return 0


def _print_next_step(run_dir: Path, state: RunState) -> None:
    """After a foreground run: how to continue a stopped one, where a finished one's outputs are."""
    if state == RunState.STOPPED:
        console.print(f"stopped cleanly; continue with: minimind-studio resume {run_dir.name}")
    elif state == RunState.FINISHED:
        console.print(f"outputs in {run_dir}\nchat with it: [bold]minimind-studio chat {run_dir}[/]")


def _world_of(run_dir: Path) -> int:
    from engine.config import load_preset
    from engine.runs.launch import world_size

    return world_size(load_preset(run_dir / "preset.toml"))


def _execute_distributed(run_dir: Path, resume: bool) -> int:
    """A foreground run of several processes: torchrun under the supervisor, its output in train.log, the
    progress display fed from the events rank 0 writes. Ctrl-C asks every rank to stop after the same step."""
    import threading

    from engine.runs.launch import Supervisor, follow_events
    from engine.runs.run_dir import read_status
    from studio.progress import RunProgress

    done = threading.Event()
    with open(run_dir / "train.log", "a", encoding="utf-8") as log, RunProgress(console) as progress:
        follower = follow_events(run_dir, [progress], done)
        try:
            state = Supervisor(run_dir, output=log).run(resume=resume)
        finally:
            done.set()
            follower.join()
    status = read_status(run_dir)
    console.print(f"run {run_dir.name}: {state} ({status.get('exit_reason') or ''})")
    _print_next_step(run_dir, state)
    return 0 if state != RunState.FAILED else 1


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.runs.run_dir import find_run

    run_dir = find_run(args.run, args.out_dir)
    if not world_overrides(args):
        return _execute(run_dir, resume=True, detach=args.detach)
    from engine.config import load_preset, save_preset
    from engine.runs.launch import keep_global_batch

    # Resuming on another number of processes or nodes: the frozen preset says how the run goes on, with the
    # accumulation that keeps each step's global batch. Checked now; written once the run is reserved.
    frozen = load_preset(run_dir / "preset.toml")
    preset, notes = keep_global_batch(frozen, load_preset(run_dir / "preset.toml", world_overrides(args)))

    def change_world() -> None:
        for note in notes:
            console.print(note, highlight=False, markup=False)
        save_preset(preset, run_dir / "preset.toml")

    return _execute(run_dir, resume=True, detach=args.detach, prepare=change_world)


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
    from engine.runs.run_dir import effective_state, find_run, read_status, request_stop

    run_dir = find_run(args.run, args.out_dir)
    state = effective_state(read_status(run_dir))
    if not state.live:
        console.print(f"{run_dir.name} is not running ({state}); nothing to stop")
        return 0
    if state == RunState.STOPPING:
        console.print(f"{run_dir.name} is already stopping: it writes a checkpoint and exits")
        return 0
    request_stop(run_dir)
    console.print(f"asked {run_dir.name} to stop: it finishes the current step, writes a checkpoint and exits. "
                  f"Resume later with: minimind-studio resume {run_dir.name}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from engine.runs.manage import delete_run
    from engine.runs.run_dir import find_run

    run_dir = find_run(args.run, args.out_dir)
    if not args.yes:
        try:
            answer = console.input(f"delete {run_dir} with its checkpoints and logs? This cannot be undone. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            console.print("not deleted")
            return 1
    delete_run(run_dir)
    console.print(f"deleted {run_dir.name}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.runs.run_dir import list_runs, summarize
    from studio.runs_table import runs_table

    summaries = [summarize(run_dir) for run_dir in list_runs(args.out_dir)]
    if not summaries:
        console.print(f"no runs under {args.out_dir} yet; start one with: minimind-studio run tiny")
        return 0
    console.print(runs_table(summaries))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from engine.runs.run_dir import find_run
    from studio.logs_view import show_logs

    show_logs(find_run(args.run, args.out_dir), follow=args.follow, console=console)
    return 0


CHAT_HELP = ("commands: /clear (forget the conversation), /system TEXT (set the system prompt), "
             "/tools FILE (JSON list of function specs) or /tools off, /result TEXT or /result @FILE (answer "
             "the model's tool call), /think on|off (templates with enable_thinking), /quit. Ctrl-C stops a reply; "
             "at the prompt it leaves")


def cmd_chat(args: argparse.Namespace) -> int:
    from functools import partial

    from engine.chat.reply import read_tool_specs
    from engine.chat.session import ChatSession
    from engine.model.generate import Sampling
    from studio.chat_console import chat_turn, print_note, print_tools_command, result_command, think_command

    tools = read_tool_specs(args.tools) if args.tools else None  # a bad file fails before the slow model load
    session = ChatSession.open(args.checkpoint, args.out_dir, device=args.device, system_prompt=args.system, tools=tools)
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
    from engine.checkpoints.lookup import resolve_checkpoint
    from studio import exporter

    dtype = exporter.check_dtype(args.format, args.dtype)
    ckpt = resolve_checkpoint(args.checkpoint, args.out_dir)
    out = exporter.write(ckpt, args.format, dtype, Path(args.dir))
    console.print(f"exported {ckpt.path} (step {ckpt.step}) to [bold]{out}[/] ({dtype}, {exporter.mib(out)}): "
                  f"{exporter.how_to_use(args.format, out, exporter.ollama_name(out.parent))}", highlight=False)
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    from engine.data.sample import sample_jsonl

    report = sample_jsonl(Path(args.input), Path(args.output), args.target_mb, args.seed)
    mib = 1024 * 1024
    console.print(f"kept {report.kept_lines:,} of {report.source_lines:,} samples, {report.kept_bytes / mib:.2f} MiB "
                  f"of {report.source_bytes / mib:.2f} MiB -> {report.out_path}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from engine.config import load_preset
    from engine.hardware.estimate import data_size, estimate_stage, parse_bytes
    from engine.train.calibrate import calibrate, detect_target
    from studio.estimate_view import estimate_renderable, estimate_title

    preset = load_preset(args.preset, list(args.set or []) + world_overrides(args))
    gpu_mem = parse_bytes(args.gpu_mem) if args.gpu_mem else None
    target = detect_target(preset, device=args.device, gpu_name=args.gpu, gpu_mem_bytes=gpu_mem, dtype=args.dtype)
    stages = [s for s in preset.stages if s != "tokenizer" and (args.stage is None or s == args.stage)]
    estimates, measured = [], {}
    for stage in stages:
        throughput, source = None, None
        if args.calibrate:
            if target.device == "cuda" and not _cuda_here():
                raise EngineError("--calibrate measures on this machine, which has no CUDA GPU; drop --gpu/--gpu-mem")
            console.print(f"calibrating {stage}: {args.calibrate_steps} real training steps ...")
            result = calibrate(preset, stage, target, steps=args.calibrate_steps)
            throughput = result.tokens_per_s
            source = f"measured over {result.steps} {'compiled' if result.compiled else 'eager'} steps"
            measured[stage] = result.tensor_peak_bytes
        estimates.append(estimate_stage(preset, stage, target, data_bytes=data_size(preset, stage),
                                        tokens_per_s=throughput, throughput_source=source))
    title = estimate_title(preset)
    console.print(estimate_renderable(title, target, estimates, measured))
    return 0 if all(e.fits is not False for e in estimates) else 1


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimind-studio",
        description="Train small Llama-style LLMs from scratch: tokenizer -> pretrain -> SFT -> chat.",
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a preset's stages (tokenizer -> pretrain -> sft) in the foreground")
    run.add_argument("preset", help="a preset file (presets/tiny.toml) or a built-in preset name (tiny)")
    run.add_argument("--stage", choices=["tokenizer", "pretrain", "sft"], help="run only this stage")
    run.add_argument("--resume", action="store_true", help="continue the newest run of this preset from its checkpoints")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a preset field (repeatable)")
    run.add_argument("--detach", action="store_true", help="run in the background, immune to the terminal closing; prints the run id")
    add_world_flags(run)
    run.set_defaults(handler=cmd_run)

    estimate = sub.add_parser("estimate", help="memory, fit, largest batch and time of a preset before launching it")
    estimate.add_argument("preset", help="a preset file or a built-in preset name")
    estimate.add_argument("--stage", choices=["pretrain", "sft"], help="only this stage")
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
    export.add_argument("--format", choices=["hf", "gguf"], default="hf",
                        help="hf: a transformers model directory; gguf: model.gguf + an Ollama Modelfile")
    export.add_argument("--dtype", help="hf: float32 (default), bfloat16, float16; gguf: f32, f16 (default), bf16, q8_0")
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
        from engine.disk_full import disk_full_error
        from engine.errors import USER_ERROR_EXIT, EngineError

        # Only the engine's own errors are written for the user, and a full disk: what to free, also where it struck
        # outside a run or struck again as a log was closed. Anything else is a bug and keeps its traceback.
        error = disk_full_error(error) or error
        if not isinstance(error, EngineError) or os.environ.get("MINIMIND_DEBUG"):
            raise
        # Text, not markup: a message naming `[pretrain]` or a path with brackets prints as written.
        err_console.print(f"[red]error:[/] {escape(inert(str(error)))}", highlight=False)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
