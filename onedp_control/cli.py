"""`onedp`: the command line. One subcommand per stage of the pipeline.

Each subcommand validates its arguments before it starts work, reports a bad value as
`onedp <command>: error: <what and where>` with exit status 2, and writes its outputs whole
or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onedp_control.argtypes import non_negative_float, positive_int
from onedp_control.errors import ConfigError
from onedp_control.sim.tasks import TASKS


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _add_task(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default=default,
        required=default is None,
        help="simulated task",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a training run: its YAML config, resuming it, quiet."""
    parser.add_argument("--config", type=Path, required=True, help="run config (YAML)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_collect(args: argparse.Namespace) -> int:
    from onedp_control.collect import collect

    report = collect(
        args.task,
        args.episodes,
        args.out,
        seed=args.seed,
        keep_failures=args.keep_failures,
        overwrite=args.overwrite,
        progress=not args.quiet,
        perturb=args.perturb,
        policy=args.policy,
        sampler=args.sampler,
    )
    print(
        f"wrote {report.episodes} episodes ({report.steps} steps) to {report.path}; "
        f"attempts {report.attempts}, discarded {report.discarded}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from onedp_control.learning.train import train

    policy = train(args.config, resume=args.resume, progress=not args.quiet)
    print(f"wrote {policy} (and last.pt, loss.png beside it)")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from onedp_control.learning.distill import distill

    policy = distill(
        args.config, args.method, args.teacher, resume=args.resume, progress=not args.quiet
    )
    print(f"wrote {policy} (and last.pt, loss.png beside it)")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from onedp_control.learning.checkpoint import pack_policy

    size = pack_policy(args.policy, args.out)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onedp_control.evaluate import evaluate, format_table
    from onedp_control.files import check_output_path, write_json_atomic

    if args.json is not None:
        check_output_path(args.json, overwrite=True, directory=False)
    report = evaluate(
        args.task,
        args.policy,
        args.episodes,
        seed=args.seed,
        clock=args.clock,
        latency_s=None if args.latency_ms is None else args.latency_ms / 1e3,
        progress=not args.quiet,
        sampler=args.sampler,
        backend=args.backend,
    )
    print(format_table(report))
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


def cmd_bench_sim(args: argparse.Namespace) -> int:
    from onedp_control.bench import bench_sim, to_markdown
    from onedp_control.files import check_output_path

    for path in (args.json, args.md):
        if path is not None:
            check_output_path(path, overwrite=True, directory=False)
    report = bench_sim(args.task, quick=args.quick)
    _write_report(report, to_markdown(report), args.json, args.md)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from onedp_control.engines.export import export_onnx

    if args.engine is not None and args.engine.suffix != ".engine":
        raise ConfigError(f"--engine: {args.engine} must end in .engine")
    manifest = export_onnx(args.checkpoint, args.onnx, args.sampler)
    for role, graph in manifest["graphs"].items():
        print(f"wrote {args.onnx.parent / graph['file']} ({role}, opset {manifest['opset']})")
    if args.engine is not None:
        from onedp_control.engines.tensorrt_backend import build_engine

        built = build_engine(args.onnx, args.engine, fp16=args.fp16, workspace_mb=args.workspace_mb)
        for role, graph in built["graphs"].items():
            print(f"wrote {args.engine.parent / graph['file']} ({role}, TensorRT)")
    return 0


def _write_report(report: dict, markdown: str, json_path: Path | None, md_path: Path | None):
    from onedp_control.files import write_json_atomic

    print(markdown)
    if json_path is not None:
        write_json_atomic(json_path, report)
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(markdown)


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from onedp_control.bench_latency import bench_latency, to_markdown
    from onedp_control.files import check_output_path

    for path in (args.json, args.md):
        if path is not None:
            check_output_path(path, overwrite=True, directory=False)
    report = bench_latency(quick=args.quick, threads=args.threads)
    _write_report(report, to_markdown(report), args.json, args.md)
    return 0


SHIPPED_MODEL = "models/pnp_milk/onedp_s.pt"


def _run_graph(args: argparse.Namespace, episodes: int | None) -> dict | None:
    from onedp_control.resources import share_file
    from onedp_control.ros.runner import GraphRunner
    from onedp_control.runtime.graph import LaunchArguments

    config = args.config or share_file(f"config/{args.task}.yaml")
    engine = args.engine or ""
    if engine:
        from onedp_control.engines import load_engine

        load_engine(Path(engine)).close()  # a missing, truncated or foreign file: fail here
    arguments = LaunchArguments(
        config=str(config),
        sim=args.sim,
        engine=str(Path(engine).resolve()) if engine else "",
        front_serial=args.front_serial,
        wrist_serial=args.wrist_serial,
        robot_host=args.robot_host,
    )
    overrides = {"sim": {"episodes": episodes or 1, "seed": args.seed}}
    runner = GraphRunner(Path(config), arguments, overrides)
    if not args.sim:
        print("onedp run: the controller runs; Ctrl-C stops it (the robot holds, then stops)")
    return (
        runner.run(episodes or 0, args.timeout, args.log_dir)
        if args.sim
        else runner.serve(args.log_dir)
    )


def _print_run(report: dict) -> None:
    latency = report["latency"]
    rows = [
        ("engine", report["engine"]),
        ("episodes", report["episodes"]),
        ("success rate", f"{100 * report['success_rate']:.0f}%"),
        ("completion time (s)", report["completion_time_s"]),
        (
            "inference median / p99 (ms)",
            f"{latency['inference_ms_median']} / {latency['inference_ms_p99']}",
        ),
        (
            "camera to command median / p99 (ms)",
            f"{latency['camera_to_command_ms_median']} / {latency['camera_to_command_ms_p99']}",
        ),
        ("command period median (ms)", latency["command_period_median_ms"]),
        ("command period error p99 (ms)", latency["command_period_error_p99_ms"]),
        ("missed 50 ms deadlines", latency["missed_deadlines"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def cmd_run(args: argparse.Namespace) -> int:
    from onedp_control.files import check_output_path, write_json_atomic

    if args.json is not None:
        check_output_path(args.json, overwrite=True, directory=False)
    report = _run_graph(args, args.episodes)
    if report is not None:
        _print_run(report)
        if args.json is not None:
            write_json_atomic(args.json, report)
            print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.sim = True
    args.engine = args.engine or str(_shipped_model())
    return cmd_run(args)


def cmd_report_methods(args: argparse.Namespace) -> int:
    from onedp_control.files import check_output_path
    from onedp_control.report import methods_markdown, report_methods

    for path in (args.json, args.md):
        if path is not None:
            check_output_path(path, overwrite=True, directory=False)
    report = report_methods(args.plan, args.episodes, args.json, args.resume, not args.quiet)
    _write_report(report, methods_markdown(report), args.json, args.md)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from onedp_control.resources import share_file
    from onedp_control.ros.runner import GraphRunner
    from onedp_control.runtime.graph import LaunchArguments

    config = args.config or share_file(f"config/{args.task}.yaml")
    arguments = LaunchArguments(
        config=str(config),
        sim=args.sim,
        front_serial=args.front_serial,
        wrist_serial=args.wrist_serial,
        robot_host=args.robot_host,
        record=True,
        dataset=str(args.dataset.resolve()),
    )
    # The operator says when an episode starts and ends; the sim cell runs one long episode.
    runner = GraphRunner(Path(config), arguments, {"sim": {"time_limit_s": 3600.0}})
    print(
        f"onedp record: recording into {args.dataset}; drive the robot with a teleop publishing "
        "/teleop/target_pose and /teleop/gripper_width; `ros2 service call /recorder/start "
        "std_srvs/srv/Trigger` (then /recorder/stop or /recorder/discard); Ctrl-C ends"
    )
    runner.serve(args.log_dir)
    return 0


def _shipped_model() -> Path:
    from onedp_control.resources import share_file

    path = share_file(SHIPPED_MODEL)
    if not path.is_file():
        raise ConfigError(f"{path}: the shipped model is missing (see models/README.md)")
    return path


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from onedp_control.bench_loop import loop_markdown
    from onedp_control.files import check_output_path

    for path in (args.json, args.md):
        if path is not None:
            check_output_path(path, overwrite=True, directory=False)
    args.sim = True
    args.engine = args.engine or str(_shipped_model())
    report = _run_graph(args, args.episodes)
    _write_report(report, loop_markdown(report), args.json, args.md)
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    from onedp_control.faults import faults_table, run_faults
    from onedp_control.files import check_output_path, write_json_atomic
    from onedp_control.resources import share_file

    if args.json is not None:
        check_output_path(args.json, overwrite=True, directory=False)
    engine = Path(args.engine) if args.engine else _shipped_model()
    if not engine.is_file():
        raise ConfigError(f"--engine: {engine}: no such file")
    config = args.config or share_file("config/pnp_milk.yaml")
    report = run_faults(engine.resolve(), Path(config), args.quick, args.log_dir, tuple(args.fault))
    print(faults_table(report), end="")
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    unsafe = sum(r["unsafe_commands"] for r in report["faults"])
    return 1 if unsafe or not all(r["held"] for r in report["faults"]) else 0


def _add_cell_options(parser: argparse.ArgumentParser, sim: bool = True) -> None:
    """Where the graph runs: the params file, the sim or the real cell's devices, logs."""
    parser.add_argument(
        "--config", type=Path, help="runtime params file (default: config/<task>.yaml)"
    )
    if sim:
        parser.add_argument(
            "--sim", action="store_true", help="the MuJoCo cell instead of the robot and cameras"
        )
    parser.add_argument("--front-serial", default="", help="D415 serial (real cell)")
    parser.add_argument("--wrist-serial", default="", help="D435 serial (real cell)")
    parser.add_argument("--robot-host", default="", help="robot address (real cell)")
    parser.add_argument("--log-dir", type=Path, help="write each node's output here")


def _add_graph_options(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    _add_cell_options(parser, sim=not demo)
    parser.add_argument("--engine", help="model file (.pt, .onnx, .engine); default: the config's")
    parser.add_argument("--episodes", type=positive_int, default=1, help="sim episodes")
    parser.add_argument("--seed", type=int, default=100_000, help="first sim episode's seed")
    parser.add_argument("--json", type=Path, help="write success_rate and the latency figures")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many s")


def build_parser() -> argparse.ArgumentParser:
    from onedp_control.evaluate import EVAL_SEED
    from onedp_control.rollout import CLOCKS

    parser = argparse.ArgumentParser(
        prog="onedp", description="One-step diffusion policy: collect, train, run, score."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = sub.add_parser(
        "collect",
        help="scripted-expert demonstrations (or a policy's rollouts) into a zarr dataset",
        description="Run the scripted expert (or a learned policy, --policy) and save "
        "successful episodes as a dataset.",
    )
    _add_task(collect)
    collect.add_argument("--episodes", type=positive_int, required=True, help="episodes to keep")
    collect.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    collect.add_argument("--seed", type=int, default=0, help="first world seed (default 0)")
    collect.add_argument(
        "--keep-failures", action="store_true", help="keep episodes the expert failed too"
    )
    collect.add_argument(
        "--perturb",
        action="store_true",
        help="execute the expert's targets with noise, record its own targets (DART): "
        "demonstrations of recovering from small errors",
    )
    collect.add_argument(
        "--policy",
        help="record this policy file's rollouts instead (its executed targets as actions): "
        "the states it visits, as observations to distil on",
    )
    collect.add_argument("--sampler", help="the policy's sampler (as in `onedp eval`)")
    collect.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.set_defaults(func=cmd_collect)

    train = sub.add_parser(
        "train",
        help="train a teacher (diffusion, flow) or a One-Step Flow Policy (ofp)",
        description="Train from a YAML config (see config/train/); its `method:` key says what: "
        "diffusion (Diffusion Policy, model.schedule ddpm or edm), flow (flow-matching teacher, "
        "schedule flow) or ofp (One-Step Flow Policy from scratch, schedule flow).",
    )
    _add_run_options(train)
    train.set_defaults(func=cmd_train)

    distill = sub.add_parser(
        "distill",
        help="distil a teacher into a one-step generator (OneDP, CP, IMLE)",
        description="One-step distillation of a trained teacher: onedp-s / onedp-d (OneDP, a "
        "DDPM or EDM teacher), cp (Consistency Policy, an EDM teacher) or imle (IMLE set "
        "distillation, a flow teacher).",
    )
    distill.add_argument("--method", required=True, choices=["onedp-s", "onedp-d", "cp", "imle"])
    distill.add_argument("--teacher", type=Path, required=True, help="teacher policy.pt")
    _add_run_options(distill)
    distill.set_defaults(func=cmd_distill)

    pack = sub.add_parser(
        "pack",
        help="store a policy.pt in float16, to ship it (e.g. in models/)",
        description="Write a policy file with float16 weights; loading restores float32.",
    )
    pack.add_argument("--policy", type=Path, required=True, help="policy.pt to pack")
    pack.add_argument("--out", type=Path, required=True)
    pack.set_defaults(func=cmd_pack)

    evaluate = sub.add_parser(
        "eval",
        help="score a policy: success rate and completion time",
        description="Run a policy on seeded episodes and report success and completion time.",
    )
    _add_task(evaluate)
    evaluate.add_argument(
        "--policy", required=True, help="'expert', or a checkpoint (policy.pt, models/...)"
    )
    evaluate.add_argument(
        "--sampler",
        help="a teacher's ddpm or ddimN (DDPM), edmN or edmsN (EDM) or eulerN (flow); onestep, "
        "or cpN (a cp policy chained over N jumps); default: ddpm, edm18 or euler50 for a "
        "teacher, onestep for a one-step policy",
    )
    evaluate.add_argument(
        "--backend",
        choices=["torch", "onnxruntime", "tensorrt"],
        help="inference engine (default: from the model file: .pt, .onnx, .engine)",
    )
    evaluate.add_argument("--episodes", type=positive_int, default=100)
    evaluate.add_argument("--json", type=Path, help="write the report (with per-episode records)")
    evaluate.add_argument(
        "--seed",
        type=int,
        default=EVAL_SEED,
        help=f"first world seed (default {EVAL_SEED}, unseen in collection)",
    )
    evaluate.add_argument(
        "--clock",
        choices=CLOCKS,
        default="lockstep",
        help="lockstep: the world waits for the policy; realtime: it does not",
    )
    evaluate.add_argument(
        "--latency-ms",
        type=non_negative_float,
        help="realtime clock: use this inference time instead of the measured one",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="benchmarks (JSON + Markdown)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    sim = bench_sub.add_parser("sim", help="physics, tracking and rendering speed")
    _add_task(sim, default="pnp_milk")
    sim.add_argument("--json", type=Path)
    sim.add_argument("--md", type=Path)
    sim.add_argument("--quick", action="store_true", help="fewer repetitions")
    sim.set_defaults(func=cmd_bench_sim)
    latency = bench_sub.add_parser(
        "latency", help="encoding, 1 / 10 / 100-step generation, torch vs ONNX Runtime"
    )
    latency.add_argument("--json", type=Path)
    latency.add_argument("--md", type=Path)
    latency.add_argument("--quick", action="store_true", help="CPU model size only, fewer runs")
    latency.add_argument("--threads", type=positive_int, help="threads (default: all cores)")
    latency.set_defaults(func=cmd_bench_latency)
    loop = bench_sub.add_parser(
        "loop", help="command period and camera-to-command latency over a sim run"
    )
    _add_graph_options(loop, demo=True)
    loop.add_argument("--md", type=Path)
    loop.set_defaults(func=cmd_bench_loop, task="pnp_milk", episodes=10)

    run = sub.add_parser(
        "run",
        help="the ROS 2 controller as processes (what the launch file starts)",
        description="Start the node graph of a task (the same graph as "
        "`ros2 launch onedp_control <task>.launch.py`) with the PyPI ROS 2 wheels.",
    )
    run.add_argument("task", choices=["pnp_milk"], help="task whose graph to run")
    _add_graph_options(run)
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="tables that compare policies")
    report_sub = report.add_subparsers(dest="report", required=True, metavar="TABLE")
    methods = report_sub.add_parser(
        "methods",
        help="every method of a plan on the task (lockstep) and its _move variant (real time)",
        description="Score each row of a plan file (a label, a policy file, a sampler) on the "
        "task with the lockstep clock and on <task>_move with the real-time clock; success, "
        "completion time, NFE, inference latency and training steps (from the policy's lineage) "
        "as one table.",
    )
    methods.add_argument(
        "--plan",
        type=Path,
        default=Path("config/report/pnp_milk_methods.yaml"),
        help="rows to score (default: config/report/pnp_milk_methods.yaml)",
    )
    methods.add_argument("--episodes", type=positive_int, default=100, help="per row and task")
    methods.add_argument("--json", type=Path, help="write the report (after every row)")
    methods.add_argument("--md", type=Path, help="write the table")
    methods.add_argument("--resume", action="store_true", help="keep the rows --json already holds")
    methods.add_argument("--quiet", action="store_true", help="no progress bars")
    methods.set_defaults(func=cmd_report_methods)

    record = sub.add_parser(
        "record",
        help="record teleoperated demonstrations into a dataset (ROS 2)",
        description="Start the recording graph (`ros2 launch onedp_control <task>.launch.py "
        "record:=true`): a teleop device drives the robot (or the sim) through the teleop node, "
        "with the safety filter and watchdog of a policy run, and the recorder writes episodes "
        "in the format `onedp collect` writes, on its start/stop/discard services.",
    )
    record.add_argument("task", choices=["pnp_milk"], help="task whose cell to record in")
    record.add_argument(
        "--dataset", type=Path, required=True, help="dataset directory (created, or appended to)"
    )
    _add_cell_options(record)
    record.set_defaults(func=cmd_record)

    faults = sub.add_parser(
        "faults",
        help="fault-injection suite: the running controller under faults (sim-in-the-loop)",
        description="Inject each fault into the running node graph and report detection time, "
        "hold, unsafe commands (must be 0) and recovery. Exit status 1 if any fault was not "
        "held or let an unsafe command through.",
    )
    faults.add_argument("--json", type=Path, help="write {'faults': [...]}")
    faults.add_argument("--quick", action="store_true", help="eight faults, about a minute")
    faults.add_argument("--engine", help="model file (default: the shipped one-step model)")
    faults.add_argument("--config", type=Path, help="runtime params file")
    faults.add_argument("--fault", action="append", default=[], help="only this fault (repeat)")
    faults.add_argument("--log-dir", type=Path, help="write each node's output here")
    faults.set_defaults(func=cmd_faults)

    from onedp_control.calibration.cli import add_calibrate_parser

    add_calibrate_parser(sub)

    from onedp_control.importers import add_import_parser

    add_import_parser(sub)

    demo = sub.add_parser(
        "demo", help="the README's main job: `onedp run pnp_milk --sim` with the shipped model"
    )
    _add_graph_options(demo, demo=True)
    demo.set_defaults(func=cmd_demo, task="pnp_milk")

    export = sub.add_parser(
        "export",
        help="checkpoint -> ONNX graphs (+ TensorRT engines on a GPU)",
        description="Export a trained model as ONNX graphs with a manifest (OUT.onnx.json); "
        "with --engine, also build TensorRT engines (needs an NVIDIA GPU and TensorRT).",
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="policy.pt or a model")
    export.add_argument("--onnx", type=Path, required=True, help="OUT.onnx")
    export.add_argument("--engine", type=Path, help="OUT.engine (TensorRT)")
    export.add_argument(
        "--fp16", action="store_true", help="TensorRT engine in float16 (float32 I/O)"
    )
    export.add_argument("--workspace-mb", type=positive_int, default=1024)
    export.add_argument("--sampler", help="a teacher's default sampler in the manifest")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "eval" and args.latency_ms is not None and args.clock != "realtime":
        parser.error("--latency-ms only applies with --clock realtime")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"onedp {args.command}: interrupted; nothing partial was written", file=sys.stderr)
        return 130
    except (ConfigError, OSError) as error:
        print(f"onedp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
