"""posttrain: SmolLM3-style post-training as a Kubeflow Pipelines DAG."""

__version__ = "0.1.0"
