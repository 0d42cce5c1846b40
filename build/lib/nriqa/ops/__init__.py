"""Operations: MLflow tracking, the model registry, BentoML packaging."""
