"""Command line: ``python -m jaxlm.search`` (also installed as ``jaxlm-search``).

Verbs:
  (none)   run the search: ask Optuna for trials and train them until --trials have finished
  status   the trials table and the best so far
  best     write best_config.py again
  plots    write the plots again
  trial    train one trial of the study (what --workers=N submits to the job balancer)

Examples:
  python -m jaxlm.search --config=configs/lstm.py --space=configs/search/lstm.py \\
      --study=studies/lstm --trials=24 --workers=2
  python -m jaxlm.search --study=studies/lstm status
  python -m jaxlm.train --config=studies/lstm/best_config.py

``--space.FIELD=KIND:ARGS`` overrides (or adds) a space entry (``loguniform:1e-4:1e-2``,
``uniform:0:0.5``, ``int:1:4``, ``choice:[(64,),(128,)]``, ``grid:0.0,0.1,0.2``);
``--config.FIELD=VALUE`` sets a base-config field. Running the same command again continues the
study (``--config`` and ``--space`` may then be left out). Bad input is one line on stderr and
exit status 2 (``--verbose``: the traceback); a SIGTERM checkpoints the running trial and exits
with 143, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxlm.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    p.add_argument(
        "verb", nargs="?", default="run", choices=("run", "status", "best", "plots", "trial")
    )
    p.add_argument("--study", required=True, help="the study folder, e.g. studies/lstm")
    p.add_argument("--config", help="base recipe file or name with variant: configs/lstm.py:smoke")
    p.add_argument("--space", help="search-space file or name with variant: configs/search/lstm.py")
    p.add_argument(
        "--trials", type=int, help="finished trials to reach (default: grid size, or 20)"
    )
    p.add_argument("--workers", type=int, default=1, help="trials at once (>1: the job balancer)")
    p.add_argument("--sampler", default="tpe", help="grid|random|tpe|gp|cmaes|nsga2 (default tpe)")
    p.add_argument("--pruner", default="none", help="none|median|hyperband|asha (default none)")
    p.add_argument("--objective", default=None, help="the metric to optimise (validation_loss)")
    p.add_argument(
        "--objectives",
        default=None,
        help="several metrics, NAME[:min|:max] by commas: validation_loss,tokens_per_s",
    )
    p.add_argument("--storage", default=None, help="a SQLAlchemy URL (default: journal in --study)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--queue", default=None, help="job queue for --workers>1 (default STUDY/jobs)")
    p.add_argument("--inventory", default="auto", help="the balancer's devices: auto, cpu, a file")
    p.add_argument("--population", type=int, default=None, help="N trials in one compiled step")
    p.add_argument("--pbt", action="store_true", help="population-based training (--population)")
    p.add_argument("--number", type=int, help="trial: the trial's number")
    p.add_argument("--dry_run", action="store_true", help="trial: print its memory need and exit")
    p.add_argument("--verbose", action="store_true", help="show tracebacks of expected errors")
    return p


def _overrides(extra: list[str], prefix: str) -> dict[str, str]:
    out = {}
    for arg in extra:
        if arg.startswith(f"--{prefix}."):
            key, sep, value = arg[len(prefix) + 3 :].partition("=")
            if not sep:
                raise SystemExit(f"error: {arg}: expected --{prefix}.FIELD=VALUE")
            out[key] = value
    return out


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns its exit status."""
    args, extra = _parser().parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith(("--config.", "--space."))]
    if unknown:
        print(f"error: unknown arguments {unknown}", file=sys.stderr)
        return 2
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
    import optuna

    from jaxlm.errors import JaxlmError
    from jaxlm.train.loop import Preempted

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _verb(args, extra)
    except Preempted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except JaxlmError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


def _verb(args: argparse.Namespace, extra: list[str]) -> int:
    from jaxlm.search import driver, results, space, study, trial

    study_dir = Path(args.study).absolute()
    if args.verb == "status":
        print(results.status_table(study_dir))
        return 0
    if args.verb == "best":
        print(results.write_best_config(study_dir))
        return 0
    if args.verb == "plots":
        for path in results.write_plots(study_dir):
            print(path)
        return 0
    if args.verb == "trial":
        if args.number is None:
            raise SystemExit("error: trial needs --number")
        if args.dry_run:
            return _dry_run(study_dir, args.number)
        state = trial.run_trial(study_dir, args.number)
        return 0 if state in ("COMPLETE", "PRUNED") else 1
    return _search(args, extra, study_dir, driver, space, study)


def _search(args, extra, study_dir, driver, space_lib, study_lib) -> int:
    from jaxlm.config import load_config
    from jaxlm.errors import SearchError

    old = study_lib.read_settings(study_dir)
    config_overrides = _overrides(extra, "config")
    space_overrides = _overrides(extra, "space")
    if args.config is None and old is None:
        raise SearchError("--config is needed to start a study (e.g. --config=configs/lstm.py)")
    if args.config is None:
        config = study_lib.load_base_config(study_dir)
        spec = old.config
    else:
        spec = args.config
        config = load_config(spec)
    if config_overrides:
        config = space_lib.apply_params(
            config, {k: _literal(v) for k, v in config_overrides.items()}
        )
        spec = spec + "".join(f" --config.{k}={v}" for k, v in config_overrides.items())
    if args.space is None and old is not None and not space_overrides:
        space = {
            f: space_lib.parse_entry(t, f"{study_dir}/study.json") for f, t in old.space.items()
        }
        space_spec = f"{study_dir}/study.json"
    else:
        space = space_lib.load_space(args.space, space_overrides)
        space_spec = args.space or "--space.*"
    if args.objective and args.objectives:
        raise SearchError("give --objective or --objectives, not both")
    objectives = args.objectives or args.objective or "validation_loss"
    if old is not None and args.config is None:
        objectives = objectives if (args.objectives or args.objective) else old.objectives
        sampler, pruner, storage = old.sampler, old.pruner, old.storage
        if args.sampler != "tpe":
            sampler = args.sampler
        if args.pruner != "none":
            pruner = args.pruner
        storage = args.storage or storage
    else:
        sampler, pruner, storage = args.sampler, args.pruner, args.storage
    driver.search(
        config,
        space,
        study_dir,
        trials=args.trials,
        workers=args.workers,
        config_spec=spec,
        space_spec=space_spec,
        sampler=sampler,
        pruner=pruner,
        objectives=objectives,
        storage=storage,
        seed=args.seed,
        queue=args.queue,
        inventory=args.inventory,
        population=args.population,
        pbt=args.pbt,
    )
    return 0


def _dry_run(study_dir: Path, number: int) -> int:
    """The trial's memory need as the job balancer reads it (``DRY_RUN {...}``)."""
    from jaxlm.search import results
    from jaxlm.search import study as study_lib
    from jaxlm.search.space import apply_params
    from jaxlm.train import plan

    s = results.load_study(study_dir)
    trial_id = s._storage.get_trial_id_from_study_id_trial_number(s._study_id, number)
    params = s._storage.get_trial(trial_id).params
    config = apply_params(study_lib.load_base_config(study_dir), params)
    print(plan.DRY_RUN_PREFIX + plan.report_json(plan.dry_run(config)), flush=True)
    return 0


def run() -> None:
    """The console script ``jaxlm-search``."""
    sys.exit(main())


if __name__ == "__main__":
    run()
