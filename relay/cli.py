"""Command line entry point (placeholder until the relay lands)."""

import click


@click.command()
def main() -> None:
    """relay: expose a TCP service behind NAT through a relay."""
