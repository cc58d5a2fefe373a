"""rtgrid command line (placeholder while the foundation lands)."""

import click


@click.group()
def main() -> None:
    """rtgrid: resumable, deduplicated transfer-learning robustness grids."""
