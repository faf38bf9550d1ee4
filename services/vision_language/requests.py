"""Domain objects of the service and the checks on them (roles, order, empties, parameter ranges).

Free of protobuf: the servicer converts wire messages into these. Errors name the request field as the
client wrote it (`messages[2].role`, `sampling.top_p`) and say what is allowed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from PIL import Image

from services.common.errors import InvalidArgument

MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 128
MAX_REQUEST_ID_CHARS = 128
TEMPERATURE_RANGE = (0.0, 2.0)
REPETITION_PENALTY_RANGE = (0.5, 2.0)
MAX_TOP_K = 1000


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Preset(enum.Enum):
    NONE = 0
    CAPTION_SHORT = 1
    CAPTION_DETAILED = 2
    VQA = 3
    OCR = 4


class FinishReason(enum.Enum):
    STOP = 1  # end-of-sequence token
    LENGTH = 2  # max_new_tokens or the context window
    STOP_SEQUENCE = 3
    CANCELLED = 4


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """A decoded image; the original bytes are kept to hand them back (GetSession) unchanged."""

    image: Image.Image
    data: bytes = b""
    media_type: str = ""


Part = TextPart | ImagePart


@dataclass(frozen=True)
class ChatMessage:
    role: Role | None  # None: the client left the role unspecified (refused by validation)
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[Image.Image]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def is_empty(self) -> bool:
        return not self.images and not self.text.strip()


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of one request. temperature 0 = greedy; max_new_tokens 0 = the server default."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 0
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    preset: Preset = Preset.NONE
    session_id: str = ""
    request_id: str = ""
    priority: int = 0  # higher first


@dataclass(frozen=True)
class Truncation:
    """Oldest turns dropped to fit the context window."""

    dropped_messages: int
    dropped_tokens: int
    context_window: int


def _role_name(role: Role | None) -> str:
    return f"ROLE_{role.name}" if role else "ROLE_UNSPECIFIED"


def validate_conversation(
    messages: list[ChatMessage], field: str = "messages", ends_with_user: bool = True
) -> None:
    """System messages first, then user and assistant turns alternating from a user turn. A conversation
    to answer ends with a user turn; opening messages of a session end with anything but a user turn.
    Images only in user turns; no empty message."""
    if not messages and ends_with_user:
        raise InvalidArgument(field, "must contain at least one message")
    previous: Role | None = None
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if message.role is None:
            raise InvalidArgument(f"{where}.role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT")
        if message.is_empty:
            raise InvalidArgument(f"{where}.content", "must contain text or an image")
        if message.role is not Role.USER:
            for j, part in enumerate(message.parts):
                if isinstance(part, ImagePart):
                    raise InvalidArgument(
                        f"{where}.content[{j}]", "images are only allowed in ROLE_USER messages"
                    )
        if message.role is Role.SYSTEM:
            if previous not in (None, Role.SYSTEM):
                raise InvalidArgument(
                    f"{where}.role", "ROLE_SYSTEM messages must come before all other messages"
                )
        elif message.role is Role.USER:
            if previous is Role.USER:
                raise InvalidArgument(
                    f"{where}.role", "ROLE_USER cannot follow ROLE_USER: user and assistant turns alternate"
                )
        elif previous in (None, Role.SYSTEM):
            raise InvalidArgument(f"{where}.role", "the first turn after system messages must be ROLE_USER")
        elif previous is Role.ASSISTANT:
            raise InvalidArgument(
                f"{where}.role",
                "ROLE_ASSISTANT cannot follow ROLE_ASSISTANT: user and assistant turns alternate",
            )
        previous = message.role
    if ends_with_user and previous is not Role.USER:
        raise InvalidArgument(
            f"{field}[{len(messages) - 1}].role",
            f"the last message must be ROLE_USER (the turn to answer), got {_role_name(previous)}",
        )
    if not ends_with_user and previous is Role.USER:
        raise InvalidArgument(
            f"{field}[{len(messages) - 1}].role",
            "opening messages of a session must not end with ROLE_USER: send that turn with Chat",
        )


def validate_session_turn(messages: list[ChatMessage], field: str = "messages") -> None:
    """With a session the request carries only the new user turn."""
    if len(messages) != 1:
        raise InvalidArgument(
            field, f"with session_id, send exactly the new ROLE_USER message (got {len(messages)} messages)"
        )
    if messages[0].role is not Role.USER:
        raise InvalidArgument(f"{field}[0].role", f"must be ROLE_USER, got {_role_name(messages[0].role)}")
    if messages[0].is_empty:
        raise InvalidArgument(f"{field}[0].content", "must contain text or an image")


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value != value or value > high or value < low or (low_open and value == low):  # NaN fails too
        bracket = "(" if low_open else "["
        raise InvalidArgument(name, f"must be in {bracket}{low:g}, {high:g}], got {value:g}")


def validate_sampling(params: SamplingParams, max_new_tokens_limit: int, field: str = "sampling") -> None:
    _check_range(f"{field}.temperature", params.temperature, *TEMPERATURE_RANGE)
    _check_range(f"{field}.top_p", params.top_p, 0.0, 1.0, low_open=True)
    if params.top_k > MAX_TOP_K:
        raise InvalidArgument(f"{field}.top_k", f"must be in [0, {MAX_TOP_K}] (0 = off), got {params.top_k}")
    _check_range(f"{field}.repetition_penalty", params.repetition_penalty, *REPETITION_PENALTY_RANGE)
    if params.max_new_tokens > max_new_tokens_limit:
        raise InvalidArgument(
            f"{field}.max_new_tokens",
            f"must be in [0, {max_new_tokens_limit}] (0 = server default), got {params.max_new_tokens}",
        )
    if params.max_new_tokens and params.min_new_tokens > params.max_new_tokens:
        raise InvalidArgument(
            f"{field}.min_new_tokens",
            f"must be <= max_new_tokens ({params.max_new_tokens}), got {params.min_new_tokens}",
        )
    if params.min_new_tokens > max_new_tokens_limit:
        raise InvalidArgument(
            f"{field}.min_new_tokens", f"must be in [0, {max_new_tokens_limit}], got {params.min_new_tokens}"
        )
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            f"{field}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(params.stop)}"
        )
    for i, stop in enumerate(params.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"{field}.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")


def validate_request_id(request_id: str, field: str = "request_id") -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidArgument(field, f"must be at most {MAX_REQUEST_ID_CHARS} printable characters")
