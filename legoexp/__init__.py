"""legoexp: the LEGO brick lab as a reproducible MLflow + Optuna study."""
