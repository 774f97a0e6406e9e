"""Training of the distilled offline NLI stand-in `minilm-head`: a small MLP on frozen all-MiniLM-L6-v2 vectors that
the offline profile's filter uses instead of an MNLI cross-encoder. It is NOT an MNLI model. Its run-time side (the
head, the NLIModel, artifact loading) is `engines/minilm_head.py`; the batch-independent encoder is `engines/embed.py`.

- `pairs.py`: by-image split and labelled pairs from accepted HierarCaps hierarchies (+ error-mimicking edits, edits.py)
- `encode.py`: the disk cache of MiniLM vectors (by text hash, safetensors)
- `train.py`: `train_nli(...)`, behind `hierarcaps train-nli`, and `save_artifact`
- `corrupt.py`: the filter's decision rule, hierarchy corruptions, threshold selection (also used by bench/nli.py)

How users get it: the trained artifact (`artifacts/minilm-head/`, ~6 MB: float32 weights + card.json) ships inside the
package, so `hierarcaps build` with the offline profile works at once on a machine without network. Training it on
first use instead would cost every new machine tens of minutes of CPU (the MiniLM encoding of ~90K texts dominates)
and would make the filter's output depend on when and where the model was trained. The card records the exact
command, data sha256, code version and environment that reproduce the weights bit for bit (same torch build and
thread count; the MiniLM vectors are computed batch-independently for that reason, see engines/embed.py).
"""
