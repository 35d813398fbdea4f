"""``fedprune tune``: a multi-objective search over strategies, densities and their knobs on Optuna.

A study is a set of trials in Optuna's storage (SQLite in the study folder by default; any SQLAlchemy URL or a
journal file lets several machines work on one study). Each trial is one real ``fedprune simulate`` run per
seed; its costs known before running (client training memory, FLOPs per sample, a static model's bytes) come
from the kernels the client will run, so a trial that breaks a constraint never starts a SuperLink.
"""
