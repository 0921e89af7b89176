"""Checkpoint tools: ``python -m jaxlm.checkpoints <verb> ...`` (also ``jaxlm-checkpoint`` and
``python tools/checkpoint.py``); ``<verb> --help`` for each.

Verbs:
  inspect   step, config, tokenizer and the parameter tree, from metadata only (--json)
  average   element-wise mean of several checkpoints' parameters, as a new checkpoint
  export    arrays to .npz / .safetensors with "/"-joined names (--dtype, --params-only)
  import    a .npz / .safetensors file back into a checkpoint shaped like another
  reshard   restore onto another device mesh (e.g. 4 devices -> 1) and save from there
  diff      leaf-by-leaf max absolute and relative difference of two checkpoints
  gpt2      Hugging Face GPT-2 (safetensors + config.json) to a jaxlm checkpoint and back
  verify    read every checkpoint (or n-gram model file) of a run and check its checksums;
            exit status 1 when any is damaged (--json)

A checkpoint PATH is a run folder (its latest checkpoint, or --step), its checkpoints/
folder, or one <workdir>/checkpoints/<step> folder; relative paths are fine. Nothing is
unpickled. Bad input is one line on stderr and exit status 2 (--verbose: the traceback).

Examples:
  python -m jaxlm.checkpoints inspect runs/lstm_smoke --json
  python -m jaxlm.checkpoints average --last 3 runs/lstm --out runs/lstm_avg3
  python -m jaxlm.checkpoints export runs/lstm params.safetensors --params-only --dtype bfloat16
  python -m jaxlm.checkpoints import params.npz --like runs/lstm --out runs/lstm_imported
  python -m jaxlm.checkpoints reshard runs/lstm --out runs/lstm_1dev --data 1
  python -m jaxlm.checkpoints diff runs/a runs/b
  python -m jaxlm.checkpoints gpt2 to-jaxlm hf_gpt2/ runs/gpt2
  python -m jaxlm.checkpoints gpt2 from-jaxlm runs/gpt2 hf_out/
  python -m jaxlm.checkpoints verify runs/lstm
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m jaxlm.checkpoints",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("inspect", help="describe a checkpoint from its metadata only")
    p.add_argument("path", help="run folder, checkpoints/ folder or checkpoint folder")
    p.add_argument("--step", type=int, help="which checkpoint of a run folder (default latest)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--all", action="store_true", help="list every array, not only params")

    p = verbs.add_parser("average", help="mean of several checkpoints' parameters")
    p.add_argument("paths", nargs="+", help="checkpoints to average, or one run folder with --last")
    p.add_argument("--last", type=int, help="average the last K checkpoints of the run folder")
    p.add_argument("--out", required=True, help="run folder for the averaged checkpoint")

    p = verbs.add_parser("export", help="arrays to .npz or .safetensors")
    p.add_argument("path", help="checkpoint path")
    p.add_argument("file", help="output .npz or .safetensors file")
    p.add_argument("--step", type=int, help="which checkpoint of a run folder")
    p.add_argument("--dtype", help="cast floating-point arrays, e.g. bfloat16 or float16")
    p.add_argument(
        "--params-only", action="store_true", help="only params/... (no optimizer state etc.)"
    )

    p = verbs.add_parser("import", help="a .npz or .safetensors file into a new checkpoint")
    p.add_argument("file", help="input .npz or .safetensors file (as export writes)")
    p.add_argument("--like", required=True, help="checkpoint giving structure, config, the rest")
    p.add_argument("--out", required=True, help="run folder for the new checkpoint")
    p.add_argument("--step", type=int, help="step of the new checkpoint (default: the file's)")
    p.add_argument("--dtype", help="cast the file's floating-point arrays to this")

    p = verbs.add_parser("reshard", help="restore onto another mesh and save from there")
    p.add_argument("path", help="checkpoint path")
    p.add_argument("--out", required=True, help="run folder for the resharded checkpoint")
    p.add_argument("--step", type=int, help="which checkpoint of a run folder")
    p.add_argument("--data", type=int, default=0, help="data-parallel size (0: all devices)")
    p.add_argument("--model", type=int, default=1, help="model-parallel size")
    p.add_argument(
        "--rule",
        action="append",
        default=None,
        help="REGEX=AXES sharding rule, e.g. 'embed/embedding=None,model' (repeatable); "
        "default: the checkpoint's config.sharding.rules",
    )
    p.add_argument(
        "--devices", type=int, help="use this many fake CPU devices (jax_num_cpu_devices)"
    )

    p = verbs.add_parser("diff", help="compare two checkpoints leaf by leaf")
    p.add_argument("a", help="checkpoint path")
    p.add_argument("b", help="checkpoint path")
    p.add_argument("--step-a", type=int)
    p.add_argument("--step-b", type=int)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--all", action="store_true", help="list equal leaves too")

    p = verbs.add_parser(
        "gpt2",
        help="Hugging Face GPT-2 <-> jaxlm Transformer",
        description="to-jaxlm keeps GPT-2's tokenizer (vocab.json + merges.txt, or "
        "tokenizer.json) when the folder has it, so the checkpoint evaluates and fine-tunes "
        "(configs/gpt2.py) as it is; from-jaxlm writes vocab.json + merges.txt for a bpe or "
        "gpt2 run.",
    )
    p.add_argument("direction", choices=("to-jaxlm", "from-jaxlm"))
    p.add_argument("src", help="HF folder (config.json + model.safetensors) or jaxlm checkpoint")
    p.add_argument("dst", help="jaxlm run folder or HF output folder")
    p.add_argument("--step", type=int, help="from-jaxlm: which checkpoint of a run folder")

    p = verbs.add_parser(
        "verify",
        help="check every checkpoint of a run against its checksums",
        description="Reads every checkpoint of PATH to the host and checks its arrays against "
        "the checksums saved in its meta (an n-gram run: its model files against "
        "model.checksums.json); one line each. Takes no lock and writes nothing.",
        epilog="exit status: 0 when everything is intact (or saved before checksums), 1 when "
        "any checkpoint or file is damaged, 2 for bad input (no checkpoint or run there)",
    )
    p.add_argument("path", help="run folder (all checkpoints), checkpoints/ or checkpoint folder")
    p.add_argument("--step", type=int, help="check only this checkpoint of a run folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return top


def main(argv: list[str] | None = None) -> int:
    """Runs one verb; returns the exit status (diff: 1 when the checkpoints differ; verify: 1
    when any checkpoint is damaged)."""
    args = _parser().parse_args(argv)
    if getattr(args, "devices", None):
        import jax

        jax.config.update("jax_num_cpu_devices", args.devices)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax logs every file it touches
    from jaxlm.errors import JaxlmError

    try:
        return _run(args)
    except (JaxlmError, FileNotFoundError, ValueError, ImportError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


def _run(args: argparse.Namespace) -> int:
    from jaxlm import checkpoints as ck
    from jaxlm.checkpoints import tools as ct
    from jaxlm.state import FIELDS

    if args.verb == "inspect":
        start = time.perf_counter()
        report = ct.inspect(args.path, args.step)
        report["seconds"] = round(time.perf_counter() - start, 4)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            parts = FIELDS if args.all else ("params",)  # the TrainState's parts
            print(ct.format_inspect(report, parts=parts))
            print(f"read from metadata in {report['seconds']:.3f} s")
    elif args.verb == "average":
        if args.last:
            if len(args.paths) != 1:
                raise ValueError("--last K takes exactly one run folder")
            sources = ck.last_checkpoints(args.paths[0], args.last)
        else:
            sources = args.paths
        out = ct.average(sources, args.out)
        print(f"averaged {len(sources)} checkpoints into {out}")
    elif args.verb == "export":
        info = ct.export(
            args.path, args.file, step=args.step, dtype=args.dtype, opt_state=not args.params_only
        )
        print(f"wrote {info['arrays']} arrays ({info['bytes']:,} bytes) to {info['file']}")
    elif args.verb == "import":
        out = ct.import_arrays(
            args.file, args.out, like=args.like, step=args.step, dtype=args.dtype
        )
        print(f"wrote {out}")
    elif args.verb == "reshard":
        rules = ct.parse_rules(args.rule) if args.rule else None
        out = ct.reshard(
            args.path, args.out, data=args.data, model=args.model, rules=rules, step=args.step
        )
        print(f"wrote {out}")
    elif args.verb == "diff":
        report = ct.diff(args.a, args.b, step_a=args.step_a, step_b=args.step_b)
        print(
            json.dumps(report, indent=1)
            if args.json
            else ct.format_diff(report, all_leaves=args.all)
        )
        return 0 if report["identical"] else 1
    elif args.verb == "gpt2":
        from jaxlm.interop import gpt2

        if args.direction == "to-jaxlm":
            out = gpt2.hf_to_jaxlm(args.src, args.dst)
        else:
            out = gpt2.jaxlm_to_hf(args.src, args.dst, step=args.step)
        print(f"wrote {out}")
    elif args.verb == "verify":
        return _verify(args)
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Prints one line per checkpoint or model file (or JSON); 1 when any is damaged."""
    from jaxlm.checkpoints.integrity import DAMAGED, OK, UNCHECKED, verify_run

    results = verify_run(args.path, args.step)
    damaged = [r for r in results if r.status == DAMAGED]
    if args.json:
        report = {"intact": not damaged, "results": [r._asdict() for r in results]}
        print(json.dumps(report, indent=1))
    else:
        for r in results:
            print(r.line())
        counts = {s: sum(r.status == s for r in results) for s in (OK, DAMAGED, UNCHECKED)}
        print(
            f"{counts[OK]} ok, {counts[DAMAGED]} damaged, {counts[UNCHECKED]} saved without "
            "checksums (read whole, nothing to compare)"
        )
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
