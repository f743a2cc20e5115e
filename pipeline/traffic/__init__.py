"""The traffic generator (``llmspend generate``): GenAI spans through the real OTel SDK.

Functional core, thin shell: :mod:`plan` turns options and the Azure trace into spans as
plain data (pure, seeded), :mod:`truth` prices them into the ground truth through
:mod:`pipeline.pricing`, :mod:`emit` replays them through a ``TracerProvider`` and a
stock exporter, :mod:`generator` ties them together (:func:`generate`, the library entry
point) and :mod:`cli` is the ``generate`` command.
"""
