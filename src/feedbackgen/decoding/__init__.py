"""Decoding: how every generator turns next-token scores into text (below `models`; it knows
nothing of generators).

One implementation of each piece (modules `search`, `seeds`, `constrained`, `plan`), used by `peter` (its
own KV-cached network), `prompt_lm` and the `transformers` LLM back-end (Hugging Face `generate`):

- **logits processors** (`search.logits_processors`): Hugging Face's own — suppressed tokens,
  `min_new_tokens`, `repetition_penalty`, `no_repeat_ngram_size` — then a plan's bias toward the
  words a text should mention (`plan.PlanBias`, when given), then a grammar constraint
  (`constrained.SchemaConstraint`, when given), then, when sampling,
  `temperature`, `top_k`, `top_p` and `RowSampler`, in the order `generate` applies them;
- **sampling** (`search.RowSampler`): each row draws from its own `torch.Generator`, seeded from its
  request (`seeds.stream_seed`), and the processor returns scores where only the drawn token is finite,
  so greedy selection (`argmax`, or Hugging Face's greedy search) takes the draw;
- **the loop** (`search.decode`): greedy or sampled decoding, or `beam_search`, over a `step` function
  that a network supplies (its KV cache stays its own business).

Seeds. A request's seed is its own (`FeedbackRequest.seed`), else `Decoding.seed`, else drawn
fresh from the OS (`seeds.with_seeds`); its random stream is seeded from that seed and the request's
content (`seeds.stream_seed`). So a request's text depends only on the model, the request, the decoding
settings and the seed — not on its batch, its position, the shard size, the engine or other
clients' requests — and no global random state is read or written. Generators record a sampled
request's seed in `Feedback.meta["seed"]`; giving it back (as the request's or the decoding's
seed) replays the text. Greedy and beam search need no seed; where one is needed anyway (an LLM
retry samples), an unseeded deterministic decoding uses seed 0, so it stays deterministic.

Tiny floating-point differences between batch shapes (padding, matrix kernels) can in rare cases
move a sampled token that sits on a probability boundary, as they can flip a greedy tie.
"""
