"""The ROC AUC metric as a local `evaluate` module (see roc_auc.py); load it by path, never from the Hub."""
