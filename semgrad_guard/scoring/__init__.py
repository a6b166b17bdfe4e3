"""Scoring: a chat model and an answer in, a :class:`~semgrad_guard.ScoreResult` out.

``hf_scorer`` (the scorer), ``fastpath`` (the fast gradient computations), ``adapters`` (hooks on a model),
``profile`` / ``sps`` (which anchor and layers to read; choosing one from labels is ``eval.profile_search``), ``loading`` / ``default_model`` /
``identity`` (which weights), ``tool_calls`` (parsing a model's tool calls). The torch-backed modules are
imported on use; importing this package costs nothing.
"""
