"""Pipeline parameters: the knobs people change when they rerun a pipeline
from the Kubeflow UI ("Clone run"): learning rates, epochs, the preference
loss and beta, and the revisions of the base model and the Hub datasets.

Each knob is a recipe field. Its default is the compiled recipe's value and
its description shows in the UI. A task's config is a JSON string in which a
knob's value is a KFP placeholder for the pipeline parameter; the KFP driver
(and kfp.local) substitutes the run's value when the task starts. A knob
appears only in the configs of the tasks that read its field, so a changed
knob reruns those tasks and what depends on them; the rest come from KFP's
cache. Structure (stages, number of chunks, the sweep grid) stays
compile-time. preflight validates the substituted recipe before any GPU is
requested, so a bad value typed into the UI fails in seconds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from posttrain.preference_losses import loss_spec, resolved_lr
from posttrain.recipe import Recipe

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Knob:
    name: str  # the pipeline parameter
    type: type  # float | str
    default: Any
    description: str
    paths: tuple[Path, ...]  # where the value lives in recipe.model_dump(mode="json")

    @property
    def sentinel(self) -> str:
        return f"@@knob:{self.name}@@"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _dataset_knobs(recipe: Recipe) -> list[Knob]:
    """One revision knob per Hub dataset repo (all its sources share it),
    or per source where a repo's sources pin different revisions."""
    by_repo: dict[str, list[tuple[Path, str, str]]] = {}
    for group in ("midtrain", "sft", "prompts"):
        for i, source in enumerate(getattr(recipe.data, group)):
            if source.hub:
                by_repo.setdefault(source.hub, []).append((("data", group, i, "revision"), source.revision, source.name))
    knobs = []
    for repo, entries in by_repo.items():
        if len({rev for _, rev, _ in entries}) == 1:
            paths = tuple(p for p, _, _ in entries)
            knobs.append(Knob(f"data_{_slug(repo.split('/')[-1])}_revision", str, entries[0][1],
                              f"Revision (branch, tag or commit) of the Hub dataset {repo}, for its {len(entries)} source(s); "
                              "a branch is resolved to a commit when the run starts and recorded in the data stats.", paths))
        else:
            knobs += [Knob(f"data_{_slug(name)}_revision", str, rev, f"Revision of the Hub dataset {repo} for source {name}.", (path,))
                      for path, rev, name in entries]
    return knobs


def recipe_knobs(recipe: Recipe) -> list[Knob]:
    """The recipe's UI knobs, in the order the UI lists them."""
    p = recipe.preference
    knobs = [Knob("base_model_revision", str, recipe.base_model.revision,
                  f"Revision (branch, tag or commit) of the base model {recipe.base_model.uri}.", (("base_model", "revision"),))]
    if recipe.midtrain.enabled:
        knobs += [
            Knob("midtrain_lr", float, recipe.midtrain.lr, "Peak learning rate of mid-training.", (("midtrain", "lr"),)),
            Knob("midtrain_epochs", float, recipe.midtrain.epochs, "Epochs of mid-training (ignored when max_steps is set).",
                 (("midtrain", "epochs"),)),
        ]
    knobs += [
        Knob("sft_lr", float, recipe.sft.lr, "Peak learning rate of SFT.", (("sft", "lr"),)),
        Knob("sft_epochs", float, recipe.sft.epochs, "Epochs of SFT (ignored when max_steps is set).", (("sft", "epochs"),)),
        Knob("preference_loss", str, p.loss,
             "Preference loss, e.g. apo_zero, sigmoid (DPO), sigmoid_norm (LN-DPO), ipo, simpo, orpo, kto; "
             "the trainer follows from it.", (("preference", "loss"),)),
        Knob("preference_beta", float, p.beta if p.beta is not None else loss_spec(p.loss).beta_default,
             "The loss's main coefficient (beta for DPO/APO/SimPO/KTO, tau for IPO, lambda for ORPO); must lie in the loss's range.",
             (("preference", "beta"),)),
        # Resolved here (the recipe's, or sft.lr / 10) so the UI shows the value used.
        Knob("preference_lr", float, resolved_lr(p, recipe.sft.lr),
             "Peak learning rate of each preference chunk (the playbook: about a tenth of the SFT rate).", (("preference", "lr"),)),
        Knob("preference_epochs", float, p.epochs, "Epochs over each chunk's pairs (preference training overfits after one).",
             (("preference", "epochs"),)),
    ]
    return knobs + _dataset_knobs(recipe)


def with_sentinels(dump: dict, knobs: list[Knob]) -> dict:
    """A copy of a recipe dump with each knob's fields holding its sentinel."""
    out = copy.deepcopy(dump)
    for knob in knobs:
        for path in knob.paths:
            node = out
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = knob.sentinel
    return out


def render(config_json: str, knobs: list[Knob], channels: dict[str, Any]) -> str:
    """A task's config JSON with each sentinel replaced by the KFP placeholder of
    its pipeline parameter (a JSON number for a float, inside the quotes for a str)."""
    for knob in knobs:
        quoted = f'"{knob.sentinel}"'
        placeholder = str(channels[knob.name])
        config_json = config_json.replace(quoted, f'"{placeholder}"' if knob.type is str else placeholder)
    return config_json


def docstring(knobs: list[Knob]) -> str:
    """The pipeline function's docstring: KFP reads parameter descriptions from its Args."""
    lines = ["Pipeline parameters (defaults from the compiled recipe).", "", "Args:"]
    lines += [f"    {k.name}: {k.description}" for k in knobs]
    return "\n".join(lines)
