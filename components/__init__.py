"""One KFP lightweight component per stage (one module each), thin wrappers
around posttrain.stages. This module stays import-light: the component code
runs inside KFP's executor, which imports posttrain.components._runtime."""

# Which image (and cluster resources) each component runs on.
IMAGE_KIND = {
    "preflight": "cpu",
    "pin-base": "cpu",
    "prepare-data": "cpu",
    "tokenize": "cpu",
    "midtrain": "train",
    "sft": "train",
    "prefgen": "generate",
    "preference-train": "train",
    "evaluate": "generate",
    "merge-boards": "cpu",
    "soup": "train",
    "select-best": "cpu",
    "publish": "cpu",
}
# Components whose pods are sized by another entry of cluster.resources than their image kind.
RESOURCE_KIND = {"prepare-data": "data", "tokenize": "data"}
