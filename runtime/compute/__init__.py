"""Compute backends for training jobs: a local scikit-learn subprocess, or Vertex AI."""
