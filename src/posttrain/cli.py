"""`posttrain validate | compile | run | submit | schedule | unschedule`.

Exit status 2 for a recipe that cannot run, or a submission refused before
any request (no KFP host, bad cron, unknown parameter); nothing is written or
sent then. Exit status 1 for an error from the KFP server (see submit.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posttrain.recipe import Recipe, RecipeError, apply_overrides, load_recipe


def _load(args) -> Recipe:
    recipe = load_recipe(args.recipe, args.profile)
    return apply_overrides(recipe, args.set) if args.set else recipe


def cmd_validate(args) -> int:
    recipe = _load(args)
    from posttrain.dag import eval_labels

    print(
        f"{args.recipe}: valid (profile {recipe.profile}; base {recipe.base_model.uri}; "
        f"{recipe.preference.chunks} preference chunk(s), loss {recipe.preference.loss}; "
        f"results rows: {', '.join(eval_labels(recipe))})"
    )
    return 0


def cmd_compile(args) -> int:
    recipe = _load(args)
    from posttrain.dag import compile_pipeline

    out = Path(args.output or f"build/{recipe.name}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(recipe, str(out))
    print(f"compiled {args.recipe} (profile {recipe.profile}) -> {out}")
    return 0


def cmd_run(args) -> int:
    recipe = _load(args)
    from posttrain.local_runner import run_local

    result = run_local(recipe, Path(args.runs_dir), caching=not args.no_cache)
    print("\n" + result.report)
    print(f"Run folder: {result.run_dir}  (report.md, kfp/, checkpoints/, tensorboard/)")
    print(f"Wall time: {result.seconds / 60:.1f} min")
    return 0


def cmd_submit(args) -> int:
    recipe = _load(args)
    from posttrain.submit import submit

    submit(recipe, Path(args.recipe), host=args.host, experiment=args.experiment, namespace=args.namespace, run_name=args.run_name,
           overrides=args.set, params=args.param)
    return 0


def cmd_schedule(args) -> int:
    recipe = _load(args)
    from posttrain.submit import schedule

    schedule(recipe, Path(args.recipe), cron=args.cron, host=args.host, experiment=args.experiment, namespace=args.namespace,
             name=args.name, overrides=args.set, params=args.param)
    return 0


def cmd_unschedule(args) -> int:
    from posttrain.submit import recurring_run_name, unschedule

    # The recipe is read only for the default name, so --name works with a recipe that no longer validates.
    name = args.name or recurring_run_name(load_recipe(args.recipe, args.profile))
    unschedule(name, host=args.host, experiment=args.experiment, namespace=args.namespace)
    return 0


def _kfp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="KFP API/UI address, e.g. https://kubeflow.example.com/pipeline (default: $KFP_HOST)")
    p.add_argument("--experiment", help="KFP experiment (default: posttrain)")
    p.add_argument("--namespace", help="profile namespace on a multi-user KFP (default: $KFP_NAMESPACE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_, default_profile):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="recipe file, e.g. pipelines/smollm3.yaml")
        p.add_argument("--profile", default=default_profile, help=f"profile inside the recipe (default: {default_profile or 'cluster'})")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field, e.g. sft.lr=1e-5")
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "check a recipe and print what it will run", None)
    add("compile", cmd_compile, "compile the recipe's DAG to KFP IR YAML", None).add_argument("-o", "--output")
    run = add("run", cmd_run, "run the DAG locally through kfp.local", "local")
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--no-cache", action="store_true", help="ignore KFP's local cache")

    auth = "auth: $KFP_TOKEN (bearer token), else the pod's KFP service-account token; $KFP_COOKIE, $KFP_CA_CERT (see posttrain/submit.py)"
    submit = add("submit", cmd_submit, "compile, upload a pipeline version named by git sha and start a KFP run", None)
    submit.description = auth
    schedule = add("schedule", cmd_schedule, "the same upload, then a KFP recurring run (max concurrency 1, no catch-up)", None)
    schedule.description = auth
    schedule.add_argument("--cron", required=True, help="5-field cron, e.g. '0 3 * * 1' (Mondays 03:00; KFP's 6-field form also taken)")
    schedule.add_argument("--name", help="recurring run name (default: <recipe>-<profile>); scheduling again replaces it")
    for p in (submit, schedule):
        _kfp_options(p)
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter for the run (default: the IR's)")
    submit.add_argument("--run-name", help="run name (default: '<recipe> <version> <UTC time>')")
    unsched = sub.add_parser("unschedule", help="delete the recurring run(s) that `schedule` made", description=auth)
    unsched.add_argument("recipe", help="recipe file, e.g. pipelines/smollm3.yaml")
    unsched.add_argument("--profile", default=None, help="profile inside the recipe (default: cluster)")
    unsched.add_argument("--name", help="recurring run name (default: <recipe>-<profile>)")
    _kfp_options(unsched)
    unsched.set_defaults(func=cmd_unschedule)

    args = parser.parse_args(argv)
    from posttrain.submit import SubmitError

    try:
        return args.func(args)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
