"""CLI commands that talk to a running stack through the gateway: generate, ask, caption, chat, status."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lumiserve.client import DEFAULT_ADDRESS, Client, Queued, Result, Started, user_message
from lumiserve.client import Progress as StepProgress

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
console = Console(stderr=True)


@dataclass(frozen=True)
class ClientOptions:
    address: str
    api_key: str | None
    ca_file: Path | None
    timeout: float | None

    def connect(self) -> Client:
        root = self.ca_file.read_bytes() if self.ca_file else None
        return Client(self.address, api_key=self.api_key, root_certificates=root, timeout=self.timeout)


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, _, height = size.lower().partition("x")
        return int(width), int(height or width)
    except ValueError:
        raise typer.BadParameter(f"{size!r}: expected WIDTHxHEIGHT, e.g. 512x512") from None


def _images_in(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to the images in them (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or folder")
    return files


def register(app: typer.Typer) -> None:
    """Adds the client commands to the `lumiserve` app, with the connection options on the app itself:
    `lumiserve [--address HOST:PORT] [--api-key KEY] generate ...`."""

    @app.callback()
    def connection(
        ctx: typer.Context,
        address: Annotated[
            str, typer.Option(envvar="LUMISERVE_ADDRESS", help="Gateway host:port.")
        ] = DEFAULT_ADDRESS,
        api_key: Annotated[str | None, typer.Option(envvar="LUMISERVE_API_KEY", help="API key.")] = None,
        ca_file: Annotated[
            Path | None, typer.Option(envvar="LUMISERVE_CA_FILE", help="Use TLS, trusting this CA.")
        ] = None,
        timeout: Annotated[
            float | None, typer.Option(envvar="LUMISERVE_TIMEOUT", help="Deadline per call (s).")
        ] = None,
    ) -> None:
        ctx.obj = ClientOptions(address, api_key, ca_file, timeout)

    @app.command("generate")
    def generate_command(
        ctx: typer.Context,
        prompt: Annotated[str, typer.Argument(help="What to draw.")],
        output: Annotated[
            Path, typer.Option("-o", "--output", help="PNG file; -1, -2... added for batches.")
        ] = Path("out.png"),
        model: Annotated[str, typer.Option(help="Model id; default: the service's default model.")] = "",
        steps: Annotated[int, typer.Option(help="Denoising steps; 0 = server default.")] = 0,
        seed: Annotated[int, typer.Option(help="-1 = random (the seed used is printed).")] = -1,
        sampler: Annotated[str, typer.Option(help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M".')] = "",
        size: Annotated[str, typer.Option(help="WIDTHxHEIGHT; default: the model's size.")] = "",
        guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
        negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
        num_images: Annotated[int, typer.Option(help="Images in the batch.")] = 1,
        init_image: Annotated[Path | None, typer.Option(help="img2img / inpainting source image.")] = None,
        mask: Annotated[Path | None, typer.Option(help="Inpainting mask (white = repaint).")] = None,
        strength: Annotated[float | None, typer.Option(help="Denoising strength for img2img, 0-1.")] = None,
        job_id: Annotated[str, typer.Option(help="Job id (for Cancel / GetJob); assigned when empty.")] = "",
    ) -> None:
        """Generate images with a live progress bar. Ctrl-C cancels the job on the server."""
        width, height = _parse_size(size) if size else (0, 0)
        fields = dict(
            model=model,
            steps=steps,
            seed=seed,
            sampler=sampler,
            width=width,
            height=height,
            guidance_scale=guidance,
            negative_prompt=negative,
            num_images=num_images,
            init_image=init_image,
            mask=mask,
            strength=strength,
            job_id=job_id,
        )
        with ctx.obj.connect() as client, _progress() as bar:
            task = bar.add_task("queued", total=None, rate="")
            for event in client.generate(prompt, **fields):
                if isinstance(event, Queued):
                    bar.update(task, description=f"queued (position {event.position})")
                elif isinstance(event, Started):
                    bar.update(task, description="generating", total=event.total_steps, completed=0)
                elif isinstance(event, StepProgress):
                    rate = f"{event.iterations_per_second:.1f} it/s, ETA {event.eta_seconds:.1f} s"
                    bar.update(task, completed=event.step, total=event.total_steps, rate=rate)
                elif isinstance(event, Result):
                    bar.update(task, description="done")
                    for index, generated in enumerate(event.images):
                        path = (
                            output
                            if len(event.images) == 1
                            else output.with_stem(f"{output.stem}-{index + 1}")
                        )
                        path.parent.mkdir(parents=True, exist_ok=True)
                        generated.image.save(path, pnginfo=_pnginfo(generated.infotext))
                        console.print(f"wrote {path} (seed {generated.seed})")

    @app.command("ask")
    def ask_command(
        ctx: typer.Context,
        args: Annotated[list[str], typer.Argument(help="IMAGE... QUESTION", metavar="IMAGE... QUESTION")],
        model: Annotated[str, typer.Option(help="Model id; default: the service's default model.")] = "",
        max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens; 0 = server default.")] = 0,
    ) -> None:
        """Ask a question about one or more images; the answer streams to stdout."""
        if len(args) < 2:
            raise typer.BadParameter("give at least one image and a question")
        images, question = _images_in([Path(a) for a in args[:-1]]), args[-1]
        with ctx.obj.connect() as client:
            message = user_message(question, images)
            for delta in client.chat([message], model=model, max_new_tokens=max_tokens):
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")

    @app.command("caption")
    def caption_command(
        ctx: typer.Context,
        paths: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
        model: Annotated[str, typer.Option(help="Model id; default: the service's default model.")] = "",
        jsonl: Annotated[
            bool, typer.Option(help="Print JSON lines {file, caption} instead of text.")
        ] = False,
    ) -> None:
        """Caption images (files or whole folders), one line per image as each completes."""
        files = _images_in(paths)
        with ctx.obj.connect() as client, _progress() as bar:
            task = bar.add_task("captioning", total=len(files), rate="")
            for caption in client.caption(files, model=model, ids=[str(f) for f in files]):
                bar.update(task, completed=caption.completed)
                text = caption.text if not caption.error else f"ERROR {caption.error}"
                print(json.dumps({"file": caption.id, "caption": text}) if jsonl else f"{caption.id}: {text}")

    @app.command("chat")
    def chat_command(
        ctx: typer.Context,
        image: Annotated[list[Path] | None, typer.Option(help="Image(s) for the first turn.")] = None,
        model: Annotated[str, typer.Option(help="Model id; default: the service's default model.")] = "",
    ) -> None:
        """Interactive multi-turn chat in a server session (history stays on the server). Ctrl-D ends it."""
        images = _images_in(image or [])
        with replace(ctx.obj, timeout=None).connect() as client:
            session = client.create_session(model=model)
            try:
                while True:
                    try:
                        text = input("you> ")
                    except EOFError:
                        break
                    if not text.strip():
                        continue
                    sys.stdout.write("assistant> ")
                    for delta in client.chat([user_message(text, images)], session_id=session):
                        sys.stdout.write(delta)
                        sys.stdout.flush()
                    sys.stdout.write("\n")
                    images = []  # images go with the first turn only
            finally:
                client.delete_session(session)

    @app.command("status")
    def status_command(
        ctx: typer.Context,
    ) -> None:
        """Instances, their loaded models and queues, as the registry sees them."""
        with replace(ctx.obj, timeout=ctx.obj.timeout or 10.0).connect() as client:
            instances = client.list_instances()
        header = ("instance", "endpoint", "hardware", "state", "models", "queued", "in flight")
        rows = [
            (
                i.id,
                i.endpoint,
                i.hardware.type,
                _state(i.state),
                ",".join(m.model_id for m in i.loaded_models),
                str(i.load.queue_depth),
                str(i.load.in_flight),
            )
            for i in instances
        ]
        if not sys.stdout.isatty():  # scripts get whole values, tab-separated
            print("\n".join("\t".join(row) for row in [header, *rows]))
            return
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        Console().print(table)


def _state(state: int) -> str:
    from lumiserve.model_registry.v1 import model_registry_pb2

    return model_registry_pb2.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower()


def _pnginfo(infotext: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    return info


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
