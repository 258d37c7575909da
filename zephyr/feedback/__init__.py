"""Teacher data and AI feedback: the data side of the Zephyr recipe (dSFT dialogues, UltraFeedback, binarizing).

Files, in pipeline order:
- ``backends.py``: OpenAI-compatible endpoints (key from the environment, counted retries with backoff),
  local checkpoints (batched ``chat_batch``), and ``build_backend`` / ``build_pool`` from config dicts.
- ``store.py``: append-only, fsynced JSONL result store; resumes after ``kill -9`` without duplicates.
- ``runner.py``: bounded-concurrency jobs against a store, Rich progress bar, recorded failures.
- ``selfinstruct.py``: Self-Instruct bootstrapping and its filters (ROUGE-L > 0.7, length, blacklist, ...).
- ``dialogues.py``: UltraChat-style teacher dialogues and the disclaimer filter -> ``ultrachat_200k`` rows.
- ``rubric.py``: the UltraFeedback judge prompts (4 aspects + overall critique).
- ``judge.py``: judging with a seeded display permutation and robust parsers -> ``openbmb/UltraFeedback`` rows.
- ``complete.py``: completions from a pool of models + judging, resumable per (prompt_id, model).
- ``binarize.py``: chosen / rejected pairs -> ``ultrafeedback_binarized`` rows.
- ``cli.py``: ``zephyr data sft | feedback | binarize``.

Every model behind these files is a ``zephyr.chat.ChatBackend``, so real endpoints and the offline toy world
(``zephyr.toy``, which holds the toy user simulator and both verifier judges) take the same code path.
"""
