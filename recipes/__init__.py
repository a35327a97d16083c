"""Entry points: training, evaluation, fine-tuning and experiments (python -m recipes.NAME)."""
