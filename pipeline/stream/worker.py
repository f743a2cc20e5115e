"""`llmspend worker`: run the stream stages in one Faust worker process."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Settings
from pipeline.stream import normalise_stage
from pipeline.stream.app import create_app


def ready_file(settings: Settings) -> Path:
    """Touched when the worker's partitions are assigned (what `up` waits for)."""
    return settings.state_dir / "run" / "worker.ready"


def build(settings: Settings):
    """The Faust app with every stage registered (stages are added here as they land)."""
    app = create_app(settings)
    normalise_stage.register(app, settings)
    marker = ready_file(settings)

    @app.on_rebalance_complete.connect
    async def _ready(sender, **_kwargs) -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("ready\n")

    return app


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (Faust stops cleanly and commits processed offsets)."""
    import faust

    ready_file(settings).unlink(missing_ok=True)
    app = build(settings)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
