"""Defenses against training-data poisoning and detectors of poisoned samples / triggered inputs, scored
against poisongen's manifests (docs/defenses.md). One module per defense (``finetune``, ``prune``,
``fineprune``, ``abl``), the detectors (``detect_samples``, ``detect_inputs``), what they share (``common``)
and each of them as one checked library call writing one output folder (``runs``)."""
