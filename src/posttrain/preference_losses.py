"""The preference losses a recipe can choose (`preference.loss`), one registry
entry each: the TRL trainer family that implements it, whether it needs a
reference model, its hyperparameters with defaults and allowed ranges from the
papers, and the TRL config fields it maps to.

| loss           | trainer (family)      | reference | beta default, range              | other                                    |
|----------------|-----------------------|-----------|----------------------------------|------------------------------------------|
| `sigmoid`      | DPOTrainer (dpo)      | yes       | β 0.1, 0.01–0.5                  |                                          |
| `ipo`          | DPOTrainer (dpo)      | yes       | τ 0.1, 0.01–1                    |                                          |
| `apo_zero`     | DPOTrainer (dpo)      | yes       | β 0.1, 0.01–0.5                  |                                          |
| `apo_down`     | DPOTrainer (dpo)      | yes       | β 0.1, 0.01–0.5                  |                                          |
| `sigmoid_norm` | DPOTrainer (dpo)      | yes       | β 5, 1–10                        | (LN-DPO: per-token average log-ratios)   |
| `hinge`        | DPOTrainer (dpo)      | yes       | β 0.1, 0.01–0.5                  | kept from before, DPO ranges             |
| `robust`       | DPOTrainer (dpo)      | yes       | β 0.1, 0.01–0.5                  | kept from before, DPO ranges             |
| `simpo`        | CPOTrainer (cpo)      | no        | β 2, 1–10                        | γ 1 (γ/β = 0.5), 0–β; cpo_alpha 0        |
| `orpo`         | ORPOTrainer (orpo)    | no        | λ 0.1, 0.1–1                     | NLL (SFT) term included                  |
| `kto`          | KTOTrainer (kto)      | yes       | β 0.1, 0.01–1                    | λ_D·n_D / (λ_U·n_U) in [1, 4/3]          |

`beta` is the recipe's name for each loss's main coefficient: DPO/APO's β,
IPO's τ, SimPO's β, ORPO's λ (TRL's `ORPOConfig.beta`), KTO's β. A recipe that
gives none gets the loss's default; a given value outside the loss's range is
a recipe error naming the field, the value and the range.

Loss-specific fields (`simpo_gamma`, `kto_desirable_weight`,
`kto_undesirable_weight`) may only be set for their loss, so a recipe never
carries a knob that silently does nothing.

KTO trains on unpaired rows: `paired_to_kto` turns each pair into a desirable
row (the chosen answer) and an undesirable one (the rejected answer), so
n_D = n_U and the KTO paper's rule λ_D·n_D / (λ_U·n_U) in [1, 4/3] becomes
λ_D / λ_U in [1, 4/3]. Unset weights default to the rule's lower end
(λ_U = 1, λ_D = λ_U·n_U / n_D).

The learning rate: `preference.lr` None means the SFT learning rate / 10 (the
SmolLM3 playbook's finding), resolved by `resolved_lr` from the SFT learning
rate that the DAG passes to the stage as `sft_lr`.

Nothing here imports torch or TRL at module level: the recipe validates with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from posttrain.recipe import PreferenceConfig

Family = Literal["dpo", "cpo", "orpo", "kto"]


@dataclass(frozen=True)
class LossSpec:
    name: str  # the recipe's `preference.loss`
    label: str  # for messages: "DPO", "SimPO", ...
    family: Family  # which TRL trainer implements it
    reference: bool  # needs a frozen reference policy
    beta_default: float
    beta_range: tuple[float, float]  # inclusive
    beta_symbol: str  # what `beta` is in the paper
    paper: str
    # The loss has its own NLL (SFT) term on the chosen answers: it can start
    # from a base model without a separate SFT stage.
    includes_sft: bool = False

    @property
    def trainer(self) -> str:
        return FAMILY_TRAINERS[self.family]


FAMILY_TRAINERS: dict[Family, str] = {"dpo": "DPOTrainer", "cpo": "CPOTrainer", "orpo": "ORPOTrainer", "kto": "KTOTrainer"}

_DPO = "Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290)"
_APO = "D'Oosterlinck et al. 2024, Anchored Preference Optimization (arXiv:2408.06266)"

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec("sigmoid", "DPO", "dpo", True, 0.1, (0.01, 0.5), "β", _DPO),
        LossSpec("ipo", "IPO", "dpo", True, 0.1, (0.01, 1.0), "τ",
                 "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences (arXiv:2310.12036)"),
        LossSpec("apo_zero", "APO-zero", "dpo", True, 0.1, (0.01, 0.5), "β", _APO),
        LossSpec("apo_down", "APO-down", "dpo", True, 0.1, (0.01, 0.5), "β", _APO),
        # Length-normalised DPO (TRL's sigmoid_norm): the log-ratios are per-token
        # averages, so β is on SimPO's scale; Tülu 3 trained its LN-DPO with β = 5.
        LossSpec("sigmoid_norm", "length-normalised DPO", "dpo", True, 5.0, (1.0, 10.0), "β",
                 "Lambert et al. 2024, Tülu 3 (arXiv:2411.15124), length-normalised DPO"),
        # Kept from before with DPO's ranges (not among issue 7's losses).
        LossSpec("hinge", "hinge (SLiC)", "dpo", True, 0.1, (0.01, 0.5), "β",
                 "Zhao et al. 2023, SLiC-HF (arXiv:2305.10425)"),
        LossSpec("robust", "robust DPO", "dpo", True, 0.1, (0.01, 0.5), "β",
                 "Chowdhury et al. 2024, Provably Robust DPO (arXiv:2403.00409)"),
        # SimPO's tuned setups use β 2.0–2.5 (v0.1) and 10 (v0.2), γ/β from 0.1 to 0.8.
        LossSpec("simpo", "SimPO", "cpo", False, 2.0, (1.0, 10.0), "β",
                 "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward (arXiv:2405.14734)"),
        # ORPO's λ: 0.1 in the paper's models, 0.1–1 in its ablation.
        LossSpec("orpo", "ORPO", "orpo", False, 0.1, (0.1, 1.0), "λ",
                 "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model (arXiv:2403.07691)",
                 includes_sft=True),
        LossSpec("kto", "KTO", "kto", True, 0.1, (0.01, 1.0), "β",
                 "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization (arXiv:2402.01306)"),
    )
}

# SimPO's target reward margin γ: the paper's tuned setups put γ/β near 0.5
# (Llama-3-Base: β 2.0, γ 1.0); γ/β above 1 was never used.
SIMPO_GAMMA_DEFAULT = 1.0
SIMPO_GAMMA_MAX_RATIO = 1.0
# KTO paper, section 4.2: λ_D·n_D / (λ_U·n_U) in [1, 4/3].
KTO_RATIO = (1.0, 4.0 / 3.0)
KTO_UNDESIRABLE_DEFAULT = 1.0
# TRL's KTO estimates its KL reference point from the other completions of a device batch.
KTO_MIN_DEVICE_BATCH = 2
# The playbook's finding: preference training at a tenth of the SFT learning rate.
LR_FRACTION_OF_SFT = 0.1


def _num(x: float) -> str:
    return f"{x:g}"


def loss_spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss type; allowed: {', '.join(LOSSES)}")
    return LOSSES[name]


# -- validation (called by PreferenceConfig's validators; messages follow the
# recipe's convention: the field and value are prefixed by the error formatter)


def check_beta(loss: str, beta: float) -> None:
    spec = loss_spec(loss)
    lo, hi = spec.beta_range
    if not lo <= beta <= hi:
        what = spec.label if spec.beta_symbol == "β" else f"{spec.label}; beta is its {spec.beta_symbol}"
        raise ValueError(f"out of range for loss {loss} ({what}); allowed {_num(lo)}–{_num(hi)} (unset: {_num(spec.beta_default)})")


def check_only_for(field: str, loss: str, wanted: str) -> None:
    if loss != wanted:
        raise ValueError(f"{field} is only for loss {wanted} ({LOSSES[wanted].label}); loss is {loss}")


def check_simpo_gamma(gamma: float, beta: float | None) -> None:
    beta = LOSSES["simpo"].beta_default if beta is None else beta
    hi = SIMPO_GAMMA_MAX_RATIO * beta
    if not 0 <= gamma <= hi:
        raise ValueError(f"out of range for loss simpo (SimPO) with beta {_num(beta)}; allowed 0–{_num(hi)} "
                         f"(gamma/beta at most {_num(SIMPO_GAMMA_MAX_RATIO)}; the paper's tuned setups use about 0.5)")


def kto_ratio(desirable_weight: float, undesirable_weight: float, n_desirable: int, n_undesirable: int) -> float:
    return desirable_weight * n_desirable / (undesirable_weight * n_undesirable)


def check_kto_desirable_weight(desirable: float, undesirable: float | None) -> None:
    """Recipe check, for the 1:1 rows that pairs give (n_D = n_U)."""
    undesirable = KTO_UNDESIRABLE_DEFAULT if undesirable is None else undesirable
    lo, hi = KTO_RATIO
    ratio = desirable / undesirable
    if not lo <= ratio <= hi:
        raise ValueError(f"out of range for loss kto (KTO) with kto_undesirable_weight {_num(undesirable)}: pairs give as many desirable as "
                         f"undesirable rows, and λ_D·n_D / (λ_U·n_U) = {ratio:.3g} must lie in [1, 4/3] (KTO paper); "
                         f"allowed {_num(lo * undesirable)}–{_num(round(hi * undesirable, 6))}")


def check_device_batch(loss: str, per_device_batch_size: int) -> None:
    if loss_spec(loss).family == "kto" and per_device_batch_size < KTO_MIN_DEVICE_BATCH:
        raise ValueError(f"loss kto needs per_device_batch_size of at least {KTO_MIN_DEVICE_BATCH} (it is {per_device_batch_size}): "
                         "KTO estimates its KL reference point from the other completions of a device batch")


# -- resolution of defaults


def resolved_beta(cfg: PreferenceConfig) -> float:
    return loss_spec(cfg.loss).beta_default if cfg.beta is None else cfg.beta


def resolved_simpo_gamma(cfg: PreferenceConfig) -> float:
    return SIMPO_GAMMA_DEFAULT if cfg.simpo_gamma is None else cfg.simpo_gamma


def resolved_lr(cfg: PreferenceConfig, sft_lr: float | None) -> float:
    """`preference.lr`, or by default the SFT learning rate / 10."""
    if cfg.lr is not None:
        return cfg.lr
    if sft_lr is None:
        raise ValueError("preference.lr is not set and its default (sft.lr / 10) needs the SFT learning rate, which the stage "
                         "config does not have (`sft_lr`): set preference.lr in the recipe")
    return sft_lr * LR_FRACTION_OF_SFT


def kto_weights(cfg: PreferenceConfig, n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(λ_D, λ_U) for these row counts: the recipe's, or the rule's lower end
    (λ_U = 1, λ_D = λ_U·n_U / n_D); a pair outside the rule is an error."""
    if n_desirable < 1 or n_undesirable < 1:
        raise ValueError(f"KTO needs desirable and undesirable rows; got {n_desirable} desirable, {n_undesirable} undesirable")
    undesirable = KTO_UNDESIRABLE_DEFAULT if cfg.kto_undesirable_weight is None else cfg.kto_undesirable_weight
    if cfg.kto_desirable_weight is None:
        desirable = undesirable * n_undesirable / n_desirable
    else:
        desirable = cfg.kto_desirable_weight
    ratio = kto_ratio(desirable, undesirable, n_desirable, n_undesirable)
    lo, hi = KTO_RATIO
    if not lo - 1e-9 <= ratio <= hi + 1e-9:
        raise ValueError(f"preference.kto_desirable_weight = {_num(desirable)}, kto_undesirable_weight = {_num(undesirable)} with "
                         f"{n_desirable} desirable and {n_undesirable} undesirable rows: λ_D·n_D / (λ_U·n_U) = {ratio:.3g}, "
                         "must lie in [1, 4/3] (KTO paper)")
    return desirable, undesirable


# -- data


def paired_to_kto(rows: list[dict]) -> list[dict]:
    """Each pair becomes two unpaired rows: (prompt, chosen, label True) and
    (prompt, rejected, label False).

    The order matters: KTOTrainer reads rows in order and estimates the KL
    term of each device batch from the batch's completions rotated by one, so
    neighbouring rows should have different prompts and both labels should be
    in every batch. The first half of the output takes pair i's desirable row
    for even i and its undesirable row for odd i, the second half the other
    row of each pair: neighbours are always different pairs (for a batch no
    larger than the number of pairs) and labels alternate."""
    first, second = [], []
    for i, row in enumerate(rows):
        good = {"prompt": row["prompt"], "completion": row["chosen"], "label": True}
        bad = {"prompt": row["prompt"], "completion": row["rejected"], "label": False}
        first.append(good if i % 2 == 0 else bad)
        second.append(bad if i % 2 == 0 else good)
    return first + second


# -- TRL


def loss_args(cfg: PreferenceConfig, n_desirable: int = 1, n_undesirable: int = 1) -> dict:
    """The TRL config fields for the recipe's loss (the family's config class:
    DPOConfig, CPOConfig, ORPOConfig or KTOConfig). KTO's weights depend on the
    rows' label counts."""
    spec = loss_spec(cfg.loss)
    beta = resolved_beta(cfg)
    if spec.family == "dpo":
        return {"loss_type": [cfg.loss], "beta": beta}
    if spec.family == "cpo":
        # cpo_alpha 0: SimPO without CPO's behaviour-cloning term.
        return {"loss_type": "simpo", "beta": beta, "simpo_gamma": resolved_simpo_gamma(cfg), "cpo_alpha": 0.0}
    if spec.family == "orpo":
        return {"beta": beta}
    desirable, undesirable = kto_weights(cfg, n_desirable, n_undesirable)
    return {"loss_type": "kto", "beta": beta, "desirable_weight": desirable, "undesirable_weight": undesirable}


def trl_classes(family: Family) -> tuple[type, type]:
    """(config class, trainer class) of a family."""
    if family == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if family == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    import warnings

    from trl.import_utils import TRLExperimentalWarning

    # CPO and ORPO live in trl.experimental (pinned TRL version); its import notice is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        if family == "cpo":
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            return CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer


def hyperparameters(cfg: PreferenceConfig, trl_args: dict) -> dict:
    """The loss's resolved hyperparameters, for the model card."""
    out = {"loss": cfg.loss, "trainer": loss_spec(cfg.loss).trainer, "reference_model": loss_spec(cfg.loss).reference}
    for key in ("beta", "simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight"):
        if key in trl_args:
            out[key] = trl_args[key]
    return out
