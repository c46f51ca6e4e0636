"""Default image of each kind: the recipe's defaults, so there is one source.
The DAG builder sets each task's image from the recipe actually compiled."""

from posttrain.recipe import ClusterConfig

DEFAULTS = ClusterConfig().images
