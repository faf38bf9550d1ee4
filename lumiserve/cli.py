"""The `lumiserve` command. Start-up stays light: torch, diffusers and transformers are imported only
inside the commands that need them (a service process, training)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from lumiserve import client_cli
from lumiserve.toyworld.cli import app as toyworld_app
from services.model_registry.cli import app as models_app

app = typer.Typer(
    name="lumiserve",
    help="gRPC serving for diffusion image generation and LLaVA-style vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(toyworld_app, name="toyworld")
app.add_typer(models_app, name="models")
client_cli.register(app)

# Service processes: `lumiserve <name> [--flag value ...]`. Each module's main(argv) parses its own
# settings (flags and LUMISERVE_* variables; `--help` lists them) and runs until SIGTERM.
SERVICE_MAINS = {
    "diffusion": ("services.diffusion.main", "Run the diffusion service."),
    "vlm": ("services.vision_language.main", "Run the vision-language service."),
    "registry": ("services.model_registry.main", "Run the model registry service."),
    "gateway": ("services.gateway.main", "Run the gateway."),
}


def _add_service_command(name: str, module: str, summary: str) -> None:
    @app.command(
        name,
        help=summary,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def run_service(ctx: typer.Context) -> None:
        import importlib

        raise typer.Exit(importlib.import_module(module).main(ctx.args))


for _name, (_module, _summary) in SERVICE_MAINS.items():
    _add_service_command(_name, _module, _summary)


@app.command("up")
def up(
    data_dir: Annotated[Path, typer.Option(help="Registry database and logs.")] = Path(".lumiserve"),
    port: Annotated[int, typer.Option(help="Gateway port; 0 = free ports for every service.")] = 50050,
    diffusion_model: Annotated[
        list[str] | None,
        typer.Option(help="id=SOURCE[;key=value...] (HF repo id or folder); repeatable. Default: toy world."),
    ] = None,
    vlm_model: Annotated[
        list[str] | None,
        typer.Option(help="id=SOURCE[;key=value...] (HF repo id or folder); repeatable. Default: toy world."),
    ] = None,
) -> None:
    """Run the whole stack on localhost (registry, diffusion, vision-language, gateway). Ctrl-C stops it."""
    from rich.console import Console

    from lumiserve.stack import StackConfig, run

    console = Console(stderr=True)
    config = StackConfig(data_dir=data_dir, gateway_port=port)
    config.diffusion_models = diffusion_model or config.diffusion_models
    config.vlm_models = vlm_model or config.vlm_models

    def announce(message: object) -> None:
        if isinstance(message, dict):
            console.print(
                f"[bold green]lumiserve is serving[/] on {message['gateway']} (logs in {message['logs']})"
            )
            console.print('  try: lumiserve generate "a red circle" -o circle.png')
            console.print('       lumiserve ask circle.png "What is in this image?"')
            console.print("  Ctrl-C stops the stack.")
        else:
            console.print(str(message))

    console.print("starting registry, diffusion, vision-language and gateway ...")
    raise typer.Exit(run(config, announce))


@app.command("version")
def show_version() -> None:
    """Print the installed lumiserve version."""
    try:
        typer.echo(version("lumiserve"))
    except PackageNotFoundError:
        typer.echo("lumiserve (not installed as a distribution)")


def main() -> None:
    """Console-script entry point: known errors end as one line on stderr, not a traceback."""
    import grpc

    from services.common.settings import SettingsError

    try:
        app()
    except SettingsError as error:
        sys.exit(f"lumiserve: invalid setting: {error}")
    except grpc.RpcError as error:
        sys.exit(f"lumiserve: {describe_rpc_error(error)}")
    except KeyboardInterrupt:
        sys.exit("lumiserve: cancelled")


def describe_rpc_error(error) -> str:
    """One line for a failed call; the common cases get a hint."""
    code, details = error.code(), error.details() or ""
    if code.name == "UNAVAILABLE" and ("connect" in details.lower() or "unreachable" in details.lower()):
        return f"cannot reach the gateway ({details.splitlines()[0]}); is `lumiserve up` running?"
    if code.name == "UNAUTHENTICATED":
        return f"{details}; pass --api-key or set LUMISERVE_API_KEY"
    return f"{code.name}: {details}"


if __name__ == "__main__":
    main()
