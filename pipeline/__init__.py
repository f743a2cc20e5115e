"""llmspend: what an organisation's LLM calls cost, as it happens.

One module per pipeline stage; see the README's architecture section for the map.
"""

__version__ = "0.1.0"
