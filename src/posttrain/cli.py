"""`posttrain validate | compile | run`.

Exit status 2 for a recipe that cannot run; nothing is written then."""

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

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
