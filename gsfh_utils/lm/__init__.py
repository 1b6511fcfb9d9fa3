"""The paper's language-model experiment in miniature (notebook 05), on a CPU in seconds.

- ``sequence``: the synthetic language with its gold reward and Bradley-Terry oracle, the GRU
  policy, supervised and DPO training, the bag-of-tokens proxy reward, samplers over responses
  (exact rejection, RSO pairs, best-of-n against worst-of-n) and the evaluation of a policy.
- ``experiment``: one seed of every method against the same budget, and the summaries and tests
  behind the notebook's claims.
"""
