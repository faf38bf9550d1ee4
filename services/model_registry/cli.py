"""`lumiserve models add|list|show|rm`: the model catalog of a running registry, over gRPC.

The registry is named by --registry or LUMISERVE_REGISTRY_ADDRESS; writes send the admin token from
--token or LUMISERVE_REGISTRY_TOKEN. Failures print one line on stderr and exit 1 (2 for bad input).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
import yaml
from google.protobuf import json_format

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.model_registry import convert
from services.model_registry.catalog import (
    Catalog,
    CatalogError,
    load_catalog,
    model_from_dict,
    model_to_dict,
    variant_from_dict,
)

DEFAULT_REGISTRY = "127.0.0.1:50060"
TIMEOUT_SECONDS = 10.0

app = typer.Typer(
    name="models",
    help="Manage the model catalog of a lumiserve registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

RegistryOption = Annotated[
    str, typer.Option("--registry", envvar="LUMISERVE_REGISTRY_ADDRESS", help="host:port of the registry.")
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token", envvar="LUMISERVE_REGISTRY_TOKEN", help="Admin token for writes.", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the protobuf's JSON mapping).")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"lumiserve models: {message}", err=True)
    raise typer.Exit(code)


def _describe(error: grpc.RpcError, address: str) -> str:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "refused" in details.lower()):
        return f"cannot reach the registry at {address} (UNAVAILABLE): is it running? (--registry)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the registry at {address} did not answer within {TIMEOUT_SECONDS:.0f} s"
    return f"{code.name}: {details}"


class Client:
    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ModelRegistryServiceStub(self.channel)

    def call(self, method: str, request: Any, write: bool = False) -> Any:
        try:
            return getattr(self.stub, method)(
                request, metadata=self.metadata if write else (), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            _fail(_describe(error, self.address))


@contextmanager
def _client(address: str, token: str = "") -> Iterator[Client]:
    client = Client(address, token)
    try:
        yield client
    finally:
        client.channel.close()


def _bad_input(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except InvalidArgument as error:
        _fail(f"invalid {error.message}", code=2)
    except CatalogError as error:
        _fail(str(error), code=2)


def parse_variant_spec(spec: str, index: int) -> dict[str, Any]:
    """'name=7b,precision=fp16,context=4096,memory=16GiB,hardware=nvidia-l4+nvidia-a100' -> a mapping."""
    aliases = {"hardware": "hardware_targets", "context": "context_window"}
    entry: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"--variant[{index}]", f"{pair!r} is not key=value")
        key = aliases.get(key.strip(), key.strip())
        entry[key] = value.strip().split("+") if key == "hardware_targets" else value.strip()
    return entry


def _page_through(client: Client, method: str, request: Any, field: str) -> list[Any]:
    items: list[Any] = []
    while True:
        response = client.call(method, request)
        items.extend(getattr(response, field))
        if not response.page_info.next_page_token:
            return items
        request.pagination.page_token = response.page_info.next_page_token


@app.command("list")
def list_models(
    registry: RegistryOption = DEFAULT_REGISTRY,
    family: Annotated[str, typer.Option(help="diffusion or vision_language.")] = "",
    task: Annotated[str, typer.Option(help="Only models serving this task.")] = "",
    hardware: Annotated[str, typer.Option(help="Only models with a variant for this hardware type.")] = "",
    as_json: JsonOption = False,
) -> None:
    """List the models of the catalog."""
    request = pb.ListModelsRequest(task=task, hardware_type=hardware)
    if family:
        request.family = _bad_input(lambda: _family_value(family))
    with _client(registry) as client:
        models = _page_through(client, "ListModels", request, "models")
    if as_json:
        typer.echo(json.dumps([json_format.MessageToDict(m) for m in models], indent=2))
        return
    rows = [("ID", "FAMILY", "TASKS", "VARIANTS", "SOURCE")]
    for message in models:
        model = convert.model_from_pb(message)
        rows.append(
            (
                model.id,
                model.family,
                ",".join(model.tasks),
                ",".join(v.name for v in model.variants),
                model.source,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        )


def _family_value(name: str) -> int:
    if name not in ("diffusion", "vision_language"):
        raise InvalidArgument("--family", f"{name!r} is not one of diffusion, vision_language")
    return convert.enum_value(common_pb2.ModelFamily, name)


@app.command("show")
def show(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    registry: RegistryOption = DEFAULT_REGISTRY,
    as_json: JsonOption = False,
) -> None:
    """Show one model (as a catalog-file entry, or --json)."""
    with _client(registry) as client:
        message = client.call("GetModel", pb.GetModelRequest(id=model_id)).model
    if as_json:
        typer.echo(json_format.MessageToJson(message))
    else:
        typer.echo(yaml.safe_dump(model_to_dict(convert.model_from_pb(message)), sort_keys=False).rstrip())


@app.command("add")
def add(
    model_id: Annotated[str, typer.Argument(help="Model id (omit with --file).", show_default=False)] = "",
    family: Annotated[str, typer.Option(help="diffusion or vision_language.")] = "",
    source: Annotated[str, typer.Option(help="Hugging Face repo id or local folder.")] = "",
    task: Annotated[list[str] | None, typer.Option(help="A task it serves (repeat).")] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="A variant: name=7b,size=7b,precision=fp16,context=4096,memory=16GiB,hardware=a+b (repeat)."
        ),
    ] = None,
    default_variant: Annotated[str, typer.Option(help="Default variant (the first one if empty).")] = "",
    revision: Annotated[str, typer.Option(help="Hub revision (branch, tag or commit).")] = "",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    label: Annotated[list[str] | None, typer.Option(help="key=value (repeat).")] = None,
    file: Annotated[
        Path | None, typer.Option(help="Add every model and artifact of a catalog YAML file.")
    ] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
    token: TokenOption = "",
) -> None:
    """Add a model from flags, or the models of a catalog file with --file."""
    if file is not None:
        if model_id:
            _fail("give either a model id with flags or --file, not both", code=2)
        catalog = _bad_input(lambda: load_catalog(file))
    elif not model_id:
        _fail("a model id (or --file) is required", code=2)
    else:
        labels = dict(pair.partition("=")[::2] for pair in label or [])
        entry = {
            "id": model_id,
            "family": family,
            "source": source,
            "tasks": task or [],
            "variants": [
                _bad_input(lambda s=s, i=i: parse_variant_spec(s, i)) for i, s in enumerate(variant or [])
            ],
            "default_variant": default_variant,
            "revision": revision,
            "description": description,
            "labels": labels,
        }
        _bad_input(lambda: [variant_from_dict(v, f"--variant[{i}]") for i, v in enumerate(entry["variants"])])
        catalog = Catalog([_bad_input(lambda: model_from_dict(entry, "model"))])
    with _client(registry, token) as client:
        for model in catalog.models:
            client.call("CreateModel", pb.CreateModelRequest(model=convert.model_to_pb(model)), write=True)
            typer.echo(f"added model {model.id}")
        for artifact in catalog.artifacts:
            created = client.call(
                "CreateArtifact",
                pb.CreateArtifactRequest(artifact=convert.artifact_to_pb(artifact)),
                write=True,
            ).artifact
            key = convert.artifact_from_pb(created).key
            typer.echo(f"added artifact {created.id} ({'/'.join(part for part in key if part)})")


@app.command("rm")
def remove(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    registry: RegistryOption = DEFAULT_REGISTRY,
    token: TokenOption = "",
) -> None:
    """Remove a model (and its artifacts) from the catalog."""
    with _client(registry, token) as client:
        client.call("DeleteModel", pb.DeleteModelRequest(id=model_id), write=True)
    typer.echo(f"removed model {model_id}")


if __name__ == "__main__":
    app(sys.argv[1:])
