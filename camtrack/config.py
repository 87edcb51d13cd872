"""One settings object for the whole server, and the one declaration of every option.

Each option is a field of `CameraSettings` (the per-camera ones) or of `Config` (the server's), and
its field's `metadata` holds an `Option`: help, validation, flag, and so on. The field itself gives
the name, the type and the default. The command line (`cli.build_parser`), the config file's keys
and their types (`cli.read_config_file`), `cli.config_from_args`, each camera's defaults
(`Config.camera`) and the checks of `__post_init__` are all derived from these fields, so adding an
option is adding a field.
"""

from __future__ import annotations

import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .media.encoder import HARDWARE_H264, UNUSABLE_H264
from .processing.contract import ProcessFunction
from .processing.loading import LoadError, parse_spec
from .processing.masks import check_masks, polygon_points
from .processing.overlay import POSITIONS, check_text
from .sources import INPUT_FORMATS, device_path, redact
from .sources.alsa import PREFIX as ALSA_PREFIX
from .sources.alsa import check_device as check_alsa_device

CODECS = ("h264", "vp8")
ENCODERS = ("shared", "per-viewer")
#: every --video-encoder a user may name
VIDEO_ENCODERS = ("auto", "libx264", *HARDWARE_H264, *UNUSABLE_H264)
#: how a camera's video reaches WebRTC viewers: decoded and encoded once, or its own H.264 as it comes
MODES = ("auto", "transcode", "passthrough")
#: when a camera's processing data makes events (camtrack.events.watcher)
PROCESS_EVENTS = ("auto", "watched", "always", "off")
#: --audio: the camera's sound to listeners (docs/audio.md); or alsa:DEVICE, a local microphone
AUDIO_MODES = ("auto", "off")


def audio_check(what: str, value: str) -> str:
    """'auto', 'off' or alsa:DEVICE (a local microphone: camtrack.sources.alsa)."""
    if value.startswith(ALSA_PREFIX):
        check_alsa_device(what, value[len(ALSA_PREFIX):])
        return value
    if value not in AUDIO_MODES:
        raise ValueError(f"{what} must be one of {', '.join(AUDIO_MODES)} or alsa:DEVICE, not {value!r}")
    return value


def talk_check(what: str, value: str) -> str:
    """'source', an rtsp:// URL, or alsa:DEVICE (the server's own speaker: camtrack.sources.alsa)."""
    if value.startswith(ALSA_PREFIX):
        check_alsa_device(what, value[len(ALSA_PREFIX):])
    return value

LOG_LEVELS = ("debug", "info", "warning", "error")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: the largest frame: 8K UHD
MAX_WIDTH, MAX_HEIGHT = 7680, 4320
#: the longest interval or time-out in seconds: longer ones are typos, not intentions
MAX_SECONDS = 3600.0
#: more viewers than this is not a home camera server (and each costs a socket, the fd limit is ~1024)
MAX_VIEWERS = 10_000
#: more worker processes than this is a typo (each is a Python process of ~60 MB)
MAX_WORKERS = 64
#: the page: static/ in a checkout, camtrack/static in an installed wheel
STATIC_DIR = next((p for p in (Path(__file__).resolve().parent.parent / "static",
                               Path(__file__).resolve().parent / "static") if (p / "index.html").is_file()),
                  Path(__file__).resolve().parent.parent / "static")

def whole(what: str, value: object) -> int:
    """`value` if it is an int (a bool is not one: TOML `true` must not pass as 1), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return value


def real(what: str, value: object) -> float:
    """`value` if it is a finite int or float, else ValueError (nan and inf pass every comparison test)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return value


def text(what: str, value: object) -> str:
    """`value` if it is a string, else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    return value


def strings(what: str, value: object) -> list[str]:
    """`value` if it is a list of strings, else ValueError."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r}")
    return value


def typed(what: str, value: object, kind: object) -> object:
    """`value` if it has the declared type `kind` of an option, else ValueError saying what it should be.

    A config file can put any TOML type anywhere, and a Config can be built by any code: a wrong type
    must be a one-line error before it reaches a comparison (or a 500 later).
    """
    if kind is int:
        return whole(what, value)
    if kind is float:
        return real(what, value)
    if kind is str:
        return text(what, value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false, not {value!r}")
        return value
    if kind == list[str]:
        return strings(what, value)
    # `X | None`: the only unions an option may have
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        if value is None:
            return None
        (inner,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        return typed(what, value, inner)
    raise TypeError(f"an option of type {kind!r} has no check")  # a declaration mistake, caught by the tests


#: checks the value of an option of the right type (and not None): returns it (normalised) or raises
#: ValueError; its first argument is the option's name in messages
Check = Callable[[str, Any], Any]


def between(low: float, high: float, says: str, above: bool = False) -> Check:
    """`low` <= value <= `high` (`low` < value if `above`), else "`name` must be `says`, not `value`"."""
    def check(what: str, value: Any) -> Any:
        if not (value > low if above else value >= low) or value > high:
            raise ValueError(f"{what} must be {says}, not {value}")
        return value
    return check


def one_of(choices: tuple[str, ...], fold: bool = False) -> Check:
    """One of `choices` (lower-cased first if `fold`)."""
    def check(what: str, value: Any) -> Any:
        value = value.lower() if fold else value
        if value not in choices:
            raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


def seconds(positive: bool = True) -> Check:
    """A duration more than 0 (or at least 0 unless `positive`), at most MAX_SECONDS."""
    return between(0, MAX_SECONDS, f"{'positive' if positive else '0 or more'} and at most {MAX_SECONDS:g} s",
                   above=positive)


def token_check(what: str, value: Any) -> Any:
    # an empty token would silently mean "no token"; whitespace cannot travel in a bearer header;
    # and the message must not repeat the value: it is a secret
    if (not value or not value.isprintable() or any(c.isspace() for c in value)):
        raise ValueError(f"{what} must be a non-empty string without spaces or control characters")
    return value


def public_address_check(what: str, value: str) -> str:
    """An IP address or a host name (resolved when a peer gathers: a dynamic DNS name may move)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if not (0 < len(value) <= 253 and all(HOST_LABEL.match(label) for label in labels)):
        raise ValueError(f"{what} must be an IP address or a host name, not {value!r}")
    return value


def rtsp_path_check(what: str, value: Any) -> Any:
    """'/' or '/A/B/': the path before a camera's name, in URL-safe characters."""
    if not re.match(r"^/([A-Za-z0-9._~-]+/)*$", value) or len(value) > 200:
        raise ValueError(f"{what} must be / or like /live/ (letters, digits, '.', '_', '~', '-'), not {value!r}")
    return value


def process_check(what: str, value: str) -> str:
    """FILE.py:FUNCTION (whether it loads is checked when the camera's pipeline is built)."""
    try:
        parse_spec(value)  # (the one rule of its form)
    except LoadError:
        raise ValueError(f"{what} must be FILE.py:FUNCTION, not {value!r}") from None
    return value


def publish_check(what: str, value: Any) -> Any:
    if not value.startswith("janus:http"):
        raise ValueError(f"{what} must look like janus:http://HOST:8088/janus, not {value!r}")
    return value


def webhook_check(what: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be an http:// or https:// URL, not {value[:100]!r}")
    return value


def mqtt_check(what: str, value: str) -> str:
    """mqtt://[USER:PASS@]HOST[:PORT][/PREFIX] or mqtts://."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - (raises ValueError for a port that is not one)
    except ValueError:
        raise ValueError(f"{what}: the port of {redact(value)!r} is not a port") from None
    prefix = parts.path.strip("/")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or any(c in prefix for c in "#+ "):
        raise ValueError(f"{what} must be mqtt://HOST[:PORT][/PREFIX] or mqtts://..., not {redact(value)!r}")
    return value


@dataclass(frozen=True)
class Option:
    """How one settings field is an option: what the dataclass field cannot say itself."""

    #: the --help text; "{default}" in it becomes the declared default
    help: str
    #: validation beyond the declared type (which is always checked)
    check: Check | None = None
    #: the option's name in error messages; default: the field's name with spaces
    label: str | None = None
    #: the command-line flag; default: --field-name. Its name without "--" is the config file's key
    flag: str | None = None
    metavar: str | None = None
    #: the values the command line and the config file accept (the config file ignoring case)
    choices: tuple[str, ...] | None = None
    #: an environment variable that gives the command line's default
    env: str | None = None
    #: False for a setting only code may change (no flag, no config file key)
    command_line: bool = True
    #: for a per-camera option: whether the server-wide value is every camera's default
    #: (max-viewers is not: on the command line it limits all cameras together)
    camera_default: bool = True


OPTION = "camtrack.option"


def option(help: str, **how: Any) -> Mapping[str, Option]:
    """The metadata of a settings field that is an option: `field(default=..., metadata=option(...))`."""
    return {OPTION: Option(help, **how)}


@dataclass(frozen=True)
class Setting:
    """One declared option as the parser, the config file and the checks see it."""

    name: str
    kind: object
    default: Any
    option: Option
    per_camera: bool

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """Its name in argparse's namespace and, "-" or "_" alike, in the config file."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def label(self) -> str:
        return self.option.label or self.name.replace("_", " ")

    @property
    def repeatable(self) -> bool:
        return self.kind == list[str]

    @property
    def help(self) -> str:
        default = self.default
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return self.option.help.replace("{default}", shown)


def default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


#: settings() of each class asked about: every Config and CameraConfig checks its options with them
_SETTINGS: dict[type, tuple[Setting, ...]] = {}


def settings(cls: type) -> tuple[Setting, ...]:
    """The options of a settings dataclass, in declaration order (inherited ones first)."""
    if cls not in _SETTINGS:
        # the annotations are strings (from __future__ import annotations): get_type_hints evaluates them
        kinds = typing.get_type_hints(cls)
        per_camera = {f.name for f in fields(CameraSettings)}
        _SETTINGS[cls] = tuple(Setting(f.name, kinds[f.name], default_of(f), f.metadata[OPTION], f.name in per_camera)
                               for f in fields(cls) if OPTION in f.metadata)
    return _SETTINGS[cls]


def check_options(settings_object: CameraSettings) -> None:
    """Check (and normalise) every declared option of `settings_object`: its type, then its own check."""
    for setting in settings(type(settings_object)):
        value = typed(setting.label, getattr(settings_object, setting.name), setting.kind)
        # None is "not set" (an optional option's default): nothing to check
        if setting.option.check is not None and value is not None:
            value = setting.option.check(setting.label, value)
        setattr(settings_object, setting.name, value)


def proxy_check(what: str, value: str) -> str:
    """An address or network (CIDR) of a trusted proxy, normalised ("10.0.0.0/8", "::1/128")."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IP address or network (like 10.0.0.1 or 10.0.0.0/8)") from None


BASE_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")


def base_path_check(what: str, value: str) -> str:
    """A path prefix as "/camera/" (a leading and a final slash; letters, digits, . _ ~ - between them)."""
    path = "/" + value.strip().strip("/") + "/" if value.strip().strip("/") else "/"
    if not BASE_PATH.match(path) or any(part in (".", "..") for part in path.split("/")):
        raise ValueError(f"{what} must be a path like /camera/ (letters, digits, . _ ~ -), not {value!r}")
    return path


# kw_only: a camera's name and source come first, positionally, in CameraConfig("porch", "/dev/video0")
@dataclass(kw_only=True)
class CameraSettings:
    """The options each camera may set: in a [cameras.NAME] table, or for every camera at the top level
    of the config file and on the command line."""

    width: int = field(default=640, metadata=option("frame width (default: {default})"))
    height: int = field(default=480, metadata=option("frame height (default: {default})"))
    # below 0.1 fps the pacer sleeps for minutes and the page looks dead
    fps: float = field(default=30.0, metadata=option(
        "frames per second (default: {default})", check=between(0.1, 120, "between 0 and 120 (at least 0.1)")))
    codec: str = field(default="h264", metadata=option(
        "video codec sent to viewers (default: {default}, constrained baseline)",
        choices=CODECS, check=one_of(CODECS, fold=True)))
    mode: str = field(default="auto", metadata=option(
        "'passthrough': WebRTC viewers get an H.264 stream's own packets (RTSP, HTTP, a file; H.264 without "
        "B-frames), no decode, no encode; 'transcode': the source is decoded and encoded once by the shared "
        "encoder; 'auto' (default): passthrough when the source allows it, else transcode",
        choices=MODES, check=one_of(MODES)))
    rtsp_transport: str = field(default="tcp", metadata=option(
        "how an rtsp:// source's packets come: 'tcp' (default: interleaved in the RTSP connection, no loss) "
        "or 'udp' (less delay where the network loses nothing)", choices=("tcp", "udp"), check=one_of(("tcp", "udp"))))
    input_format: str = field(default="raw", metadata=option(
        "what a V4L2 camera (/dev/videoN) is asked for: 'raw' pictures (default, read with OpenCV), 'h264' "
        "(its own H.264, passed through: the Raspberry Pi camera) or 'mjpeg' (decoded by camtrack), read with PyAV",
        choices=INPUT_FORMATS, check=one_of(INPUT_FORMATS)))
    #: target bitrate of the shared encoder, bits per second
    bitrate: int = field(default=1_000_000, metadata=option(
        "target bitrate of the shared encoder in bit/s (default: {default})", metavar="BPS",
        check=between(50_000, 50_000_000, "between 50000 and 50000000 bit/s")))
    #: seconds between periodic keyframes of the shared encoder
    keyframe_interval: float = field(default=2.0, metadata=option(
        "seconds between periodic keyframes of the shared encoder (default: {default})", metavar="SECONDS",
        check=between(0, 600, "positive and at most 600 s", above=True)))
    #: the low quality tier (camtrack.media.tiers): encoded once for its viewers while someone watches it
    low_scale: float = field(default=0.5, metadata=option(
        "the low quality tier's width and height as a share of the camera's, for viewers whose link cannot "
        "carry the camera's own (default: {default}; 0: no low tier)", metavar="SHARE",
        check=between(0, 1, "between 0 (no low tier) and 1")))
    low_bitrate: int = field(default=0, metadata=option(
        "the low quality tier's bitrate in bit/s (default: 0, a quarter of --bitrate)", metavar="BPS",
        check=between(0, 50_000_000, "0 (a quarter of --bitrate) or at most 50000000 bit/s")))
    low_fps: float = field(default=0.0, metadata=option(
        "the low quality tier's frame rate (default: 0, the camera's)", metavar="FPS",
        check=between(0, 120, "0 (the camera's) or at most 120")))
    #: the camera's own second stream as its low tier, passed through (camtrack.media.tiers)
    low_source: str | None = field(default=None, metadata=option(
        "the camera's own second stream (an IP camera's sub-stream, e.g. rtsp://.../sub) as its low tier: its "
        "H.264 passed through, no encoding (one that is not H.264 without B-frames: the low tier is encoded, "
        "as the log says; default: none). Per camera: not every camera's default", metavar="URL",
        camera_default=False))
    #: at most this many viewers at once, over every transport: of the server (Config), of a camera
    #: (CameraConfig); 0: no limit
    max_viewers: int = field(default=0, metadata=option(
        "at most N viewers at once; the next gets 'server full' (default: 0, no limit)", metavar="N",
        check=between(0, MAX_VIEWERS, f"0 (no limit) or more, at most {MAX_VIEWERS}"), camera_default=False))
    #: publish to a Janus VideoRoom: "janus:http://HOST:8088/janus", its room, pin and display name
    publish: str | None = field(default=None, metadata=option(
        "also publish every camera to a Janus VideoRoom, e.g. janus:http://HOST:8088/janus "
        "(the shared encoder's packets, one upstream stream; retried until it works)",
        metavar="janus:URL", check=publish_check))
    # Janus keeps room ids as signed 64-bit integers and has no room 0
    janus_room: int | None = field(default=None, metadata=option(
        "the VideoRoom to publish in (with --publish)", metavar="N",
        check=between(1, 2**63 - 1, f"between 1 and {2**63 - 1}")))
    janus_pin: str | None = field(default=None, metadata=option("the room's pin, if it has one", metavar="PIN"))
    janus_display: str | None = field(default=None, metadata=option(
        "the publisher's display name in the room (default: the camera's name)", metavar="NAME"))
    #: the camera's ONVIF back-channel viewers may talk to (camtrack.outputs.webrtc.talk, docs/audio.md)
    talk: str | None = field(default=None, metadata=option(
        "let viewers talk to the camera through its ONVIF RTSP back-channel (two-way audio): 'source' (its "
        "own rtsp:// source) or an rtsp:// URL; or through the server's own speaker, alsa:DEVICE (a local "
        "camera's: alsa:default, alsa:plughw:CARD=...); talking needs --talk-token (docs/audio.md)",
        metavar="URL", check=talk_check))
    #: the camera's sound (camtrack.media.audio, docs/audio.md)
    audio: str = field(default="auto", metadata=option(
        "the camera's sound to viewers whose offer asks for audio, encoded to Opus once for all of them "
        "while someone listens: 'auto' (default): the test pattern's tone, a file's or stream's own audio "
        "track; 'off': none; alsa:DEVICE: a local microphone (alsa:default, alsa:plughw:CARD=..., as "
        "`arecord -L` lists them), e.g. beside a local camera (docs/audio.md)", metavar="auto|off|alsa:DEVICE",
        check=audio_check))
    #: a user's function run on every captured frame (camtrack.processing): FILE.py:FUNCTION
    process: str | None = field(default=None, metadata=option(
        "run this Python function on every captured frame, once for all viewers, on a thread of its own: "
        "path/to/file.py:function (docs/processing.md); the picture it draws is what every viewer gets; "
        "saving the file reloads it", metavar="FILE.py:FUNCTION", check=lambda what, value: process_check(what, value)))
    process_timeout: float = field(default=2.0, metadata=option(
        "a --process call running longer than this counts as stalled: pictures pass unprocessed until it "
        "returns (default: {default})", metavar="SECONDS", check=between(0, 600, "positive and at most 600 s",
                                                                        above=True)))
    #: the --process function is called at most this many times a second (None: on every frame)
    process_fps: float | None = field(default=None, metadata=option(
        "call the --process function at most this many times a second (default: on every frame it keeps up "
        "with); a function that only returns data leaves the video at the camera's rate, a drawing one's "
        "pictures are the video, so it then runs at this rate", metavar="FPS", label="process fps",
        check=between(0, 240, "positive and at most 240", above=True)))
    #: the built-ins (camtrack.processing: masks, overlay, motion; docs/processing.md#built-ins)
    masks: list[str] = field(default_factory=list, metadata=option(
        "black out this polygon of every picture before anything reads it (viewers, MJPEG, snapshots, RTSP, "
        "Janus, --process), repeatable: \"x1,y1 x2,y2 x3,y3 ...\" in pixels of the picture or in "
        "percent (\"0,0 50%,0 50%,20%\"); the camera is then transcoded", flag="--mask", metavar="POLYGON",
        label="mask", check=lambda what, values: check_masks(what, values)))
    overlay: str | None = field(default=None, metadata=option(
        "draw this line of text on every picture, its strftime codes the capture time and {camera} the "
        "camera's name, e.g. \"%Y-%m-%d %H:%M:%S {camera}\" (drawn after --process, on top)", metavar="TEXT",
        check=lambda what, value: check_text(what, value)))
    overlay_position: str = field(default="top-left", metadata=option(
        "the corner of the --overlay text (default: {default})", choices=POSITIONS, check=one_of(POSITIONS)))
    motion: bool = field(default=False, metadata=option(
        "detect motion on a down-scaled grey copy of every picture: its level and regions as data beside "
        "the video (docs/processing.md#motion)"))

    #: events from the processing data (camtrack.events.watcher): while watched, always, or never
    process_events: str = field(default="auto", metadata=option(
        "make events of the camera's processing data (the motion detector's levels, a --process function's "
        "\"event\" reports; docs/events.md): 'watched': while someone watches the camera; 'always': "
        "the camera is read and processed all the time, watched or not; 'auto' (default): 'always' when the "
        "events leave the page (the camera records, or there is a --webhook or --mqtt), else 'watched'; 'off': "
        "no events from the data",
        choices=PROCESS_EVENTS, check=one_of(PROCESS_EVENTS)))
    motion_event_threshold: float = field(default=0.05, metadata=option(
        "a motion event starts when the motion level (0-1) stays at or above this for --motion-event-duration "
        "(default: {default})", metavar="LEVEL", check=between(0, 1, "more than 0 and at most 1", above=True)))
    motion_event_duration: float = field(default=0.5, metadata=option(
        "seconds the motion level must stay at or above --motion-event-threshold to start an event "
        "(default: {default})", metavar="SECONDS", check=between(0, 600, "0 or more and at most 600 s")))
    motion_event_gap: float = field(default=5.0, metadata=option(
        "a motion event ends once the level has stayed below the threshold this long (default: {default})",
        metavar="SECONDS", check=between(0, MAX_SECONDS, f"positive and at most {MAX_SECONDS:g} s", above=True)))
    #: record clips of the camera's events under this directory (camtrack.outputs.recording)
    record: str | None = field(default=None, metadata=option(
        "record a clip of each of the camera's events (with pre-roll, from the packets viewers get: no "
        "decode, no encode) under this directory, as DIR/CAMERA/YYYY-MM-DD/*.mp4 (docs/recording.md); "
        "the camera's source then stays open", metavar="DIR"))
    pre_roll: float = field(default=5.0, metadata=option(
        "a clip starts at the last keyframe at least this long before its event (default: {default})",
        metavar="SECONDS", check=between(0, 60, "between 0 and 60 s")))
    post_roll: float = field(default=5.0, metadata=option(
        "a clip ends this long after its last event ends (default: {default})", metavar="SECONDS",
        check=between(0, 600, "between 0 and 600 s")))
    record_segments: float = field(default=0.0, metadata=option(
        "with --record, also record continuously, in clips of this many seconds, each from a keyframe, "
        "one after the other (events then add their ids and kinds to the clips they fall in; default: 0, "
        "events only)", metavar="SECONDS", check=between(0, 3600, "between 0 (events only) and 3600 s")))

    def __getstate__(self) -> dict[str, Any]:
        # a process function (CameraConfig's, Config's) is a live object of this process (a thread, a
        # user's closure): the copy sent to a worker process, which runs no camera, goes without it
        return {**self.__dict__, "process_function": None}


@dataclass
class CameraConfig(CameraSettings):
    """One camera: its name (in URLs), its source and how it is encoded."""

    name: str
    source: str
    #: the --process function as a Python callable, for programs that embed camtrack (wins over `process`)
    process_function: ProcessFunction | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # types first: a TOML file can put any type anywhere, and a wrong one must not reach a comparison
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ValueError(f"camera name {self.name!r} must be letters, digits, '-' or '_'")
        if not text("source", self.source):
            raise ValueError("source must not be empty")
        check_options(self)
        if self.input_format != "raw" and device_path(self.source) is None and self.source != "auto":
            raise ValueError(f"input-format {self.input_format} is for a camera device (/dev/videoN), "
                             f"not {self.source!r}")
        if not (0 < self.width <= MAX_WIDTH and 0 < self.height <= MAX_HEIGHT) or self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even and positive, at most {MAX_WIDTH}x{MAX_HEIGHT}, "
                             f"not {self.width}x{self.height}")
        if self.publish is not None and self.janus_room is None:
            raise ValueError("publishing to Janus needs a room (--janus-room)")
        if self.mode == "passthrough" and self.codec != "h264":
            raise ValueError("passthrough sends the camera's own H.264: it needs codec h264")
        if self.masks:
            if self.mode == "passthrough":
                raise ValueError("--mask blacks out parts of the picture, which must then be encoded again: "
                                 "not with --mode passthrough (use auto or transcode)")
            for polygon in self.masks:
                try:
                    polygon_points(polygon, self.width, self.height)
                except ValueError as exc:
                    # (masks given for every camera may fit one camera's picture and not another's)
                    raise ValueError(f"{'' if self.name == 'default' else f'camera {self.name}: '}{exc}") from None

    @property
    def janus_url(self) -> str | None:
        """The Janus HTTP API address of `publish`."""
        return self.publish.removeprefix("janus:") if self.publish else None


@dataclass
class Config(CameraSettings):
    """Everything a camtrack server is built from; `create_app(config)` reads nothing else.

    The per-camera options (CameraSettings) are the defaults of every camera (but max_viewers).
    """

    host: str = field(default="0.0.0.0", metadata=option("address to listen on (default: all, {default})"))
    # 0 asks the system for a free port (tests do); the command line insists on 1..65535
    port: int = field(default=8080, metadata=option(
        "port to listen on (default: {default})", check=between(0, 65535, "between 1 and 65535")))
    #: the source of the camera named "default", when there is no other camera
    source: str = field(default="auto", metadata=option(
        "camera index or /dev/videoN, a video file, a stream URL (rtsp://, http://), "
        "'pattern' for the built-in test pattern, or 'auto' (default): camera 0 if it opens, else pattern"))
    #: "shared": one encoder for every viewer; "per-viewer": aiortc encodes for each
    encoder: str = field(default="shared", metadata=option(
        "'shared' (default): each frame encoded once for every viewer; "
        "'per-viewer': aiortc encodes for each viewer, with its own congestion control",
        choices=ENCODERS, check=one_of(ENCODERS)))
    video_encoder: str = field(default="auto", metadata=option(
        "the shared encoder's H.264 encoder: 'auto' (default: the first of "
        f"{', '.join(HARDWARE_H264)} that opens on this box at the configured size, else libx264; the log "
        "says which), 'libx264', or one by name (h264_vaapi is refused with the reason, falling back to libx264)",
        choices=VIDEO_ENCODERS, check=one_of(VIDEO_ENCODERS)))
    ice_servers: list[str] = field(default_factory=list, metadata=option(
        "STUN/TURN server, repeatable: stun:HOST:PORT or turn:USER:PASS@HOST:PORT "
        "(default: none, host candidates only, for a LAN)", flag="--ice-server", metavar="URL"))
    ice_addresses: list[str] = field(default_factory=list, metadata=option(
        "offer only this local IP address or interface as a host candidate, repeatable "
        "(default: all the machine's addresses)", flag="--ice-address", metavar="ADDR"))
    #: every peer's ICE, DTLS and SRTP on this one UDP port (outputs/webrtc/udpmux.py); 0: a
    #: random port per peer. 8555 is go2rtc's WebRTC port (MediaMTX's 8189 stays free for it)
    webrtc_port: int = field(default=8555, metadata=option(
        "the one UDP port of every viewer's WebRTC (ICE, DTLS, SRTP), WHEP's and Janus publishing's "
        "included (default: {default}); 0: a random port per peer", metavar="PORT", label="WebRTC port",
        check=between(0, 65535, "between 0 (a random port per peer) and 65535")))
    #: every camera also over RTSP (camtrack.outputs.rtsp) on this TCP port; 0: no RTSP. 8554 is
    #: go2rtc's and MediaMTX's
    rtsp_port: int = field(default=8554, metadata=option(
        "serve every camera over RTSP on this TCP port, at rtsp://HOST:PORT/NAME (TCP interleaved or "
        "UDP; the packets WebRTC viewers get; default: {default}); 0: no RTSP", metavar="PORT",
        label="RTSP port", check=between(0, 65535, "between 0 (no RTSP) and 65535")))
    rtsp_path: str = field(default="/", metadata=option(
        "the path before each camera's name in its RTSP URL, e.g. /live/ for rtsp://HOST:PORT/live/NAME "
        "(default: {default})", metavar="PATH", label="RTSP path", check=rtsp_path_check))
    #: processes that serve WebRTC viewers (camtrack.workers): 0, this process until it is busy, then
    #: workers on demand; 1, this process alone; N, N workers from the start
    workers: int = field(default=0, metadata=option(
        "processes that serve WebRTC viewers: 0 (default): the main process, and once its event loop is "
        "busy, worker processes as needed, up to one per core, each stopped after a minute without viewers; "
        "1: the main process alone; N > 1: N worker processes from the start, fed each encoded frame once by "
        "the main process, which keeps the cameras and encoders; all on the one --webrtc-port", metavar="N",
        check=between(0, MAX_WORKERS, f"0 (as needed, up to one per core) or more, at most {MAX_WORKERS}")))
    public_addresses: list[str] = field(default_factory=list, metadata=option(
        "also offer this address (IP or host name) with the WebRTC port as a host candidate, repeatable: "
        "a 1:1 NAT's or a port forward's public address", flag="--public-address", metavar="ADDR",
        label="public address", check=lambda what, values: [public_address_check(what, v) for v in values]))
    #: coturn's static-auth-secret: each peer gets TURN credentials made from it that expire
    turn_secret: str | None = field(default=None, metadata=option(
        "the TURN server's shared secret (coturn's use-auth-secret/static-auth-secret): each viewer "
        "gets credentials that expire for the --ice-server turn: URLs, given without USER:PASS "
        "(default: $CAMTRACK_TURN_SECRET)", env="CAMTRACK_TURN_SECRET", metavar="SECRET",
        label="TURN secret", check=token_check))
    #: seconds a peer may take to reach "connected" before it is closed
    negotiation_timeout: float = field(default=15.0, metadata=option(
        "close a peer that has not connected within this time (default: {default})", metavar="SECONDS",
        check=seconds()))
    #: seconds a connected WebRTC viewer may send nothing at all (no RTCP, no STUN) before it is closed
    unresponsive_timeout: float = field(default=8.0, metadata=option(
        "close a connected WebRTC viewer from which nothing (RTCP reports, STUN consent) came for this "
        "long, so that frozen viewers do not keep their places (0: only when ICE consent expires, 30 s; "
        "default: {default})", metavar="SECONDS", check=seconds(positive=False)))
    #: seconds a websocket may stay open with no peer (and say nothing useful) before it is closed
    idle_timeout: float = field(default=30.0, metadata=option(
        "close a websocket that has sent no offer within this time (default: {default})", metavar="SECONDS",
        check=seconds()))
    #: seconds a client has to send a request's headers (or a WHEP offer's body); idle keep-alive too
    header_timeout: float = field(default=10.0, metadata=option(
        "close a connection that has not sent a request's headers (or a WHEP offer) "
        "within this time, and idle keep-alive connections (default: {default})", metavar="SECONDS",
        check=seconds()))
    #: most HTTP connections open at once; 0: half the open-file limit (camtrack.connections)
    max_connections: int = field(default=0, metadata=option(
        "at most N HTTP connections at once (default: {default}, half the open-file limit, at most "
        "4096); at the cap a new one closes the one that waited longest without a request", metavar="N",
        check=between(0, 1_000_000, "0 (from the open-file limit) to 1000000")))
    #: most sessions that are not viewers yet (a websocket without a connected peer, a WHEP offer
    #: not connected yet); one more closes the oldest of the client with the most of them
    max_pending: int = field(default=64, metadata=option(
        "at most N sessions that are not viewers yet (default: {default}); one more closes the "
        "oldest of the client with the most", metavar="N", check=between(1, 100_000, "between 1 and 100000")))
    #: admission control: a median event-loop lag above this over 2 s means "server full"
    max_loop_lag: float = field(default=0.05, metadata=option(
        "refuse new viewers while the event loop lags more than this (median over 2 s; default: "
        "{default}; 0: off)", metavar="SECONDS", check=between(0, 10, "between 0 and 10")))
    #: admission control: the capacity is the viewers one picture reaches within this time
    send_budget: float = field(default=0.02, metadata=option(
        "refuse new viewers beyond those one picture reaches within this time, as measured "
        "(default: {default}; 0: off)", metavar="SECONDS", check=between(0, 10, "between 0 and 10")))
    #: admission control: pictures reaching the first viewer later than this after capture (median) mean full
    # (capture to socket includes encoding: a software encoder on a small board takes tens of ms at
    # 720p, which is no overload, so the default leaves room for that)
    max_picture_age: float = field(default=0.25, metadata=option(
        "refuse new viewers while pictures reach the first viewer's socket later than this after capture "
        "(median over 2 s; default: {default}; 0: off)", metavar="SECONDS", check=between(0, 10, "between 0 and 10")))
    #: admission control: under a CPU quota, viewers may bring the process to this share of it
    max_cpu: float = field(default=0.8, metadata=option(
        "under a CPU quota (a container's, systemd's CPUQuota), refuse new viewers beyond those that "
        "keep the server under this share of it, projected from its measured use and cost per viewer "
        "(default: {default}; 0: off)", metavar="SHARE", check=between(0, 1, "between 0 and 1")))
    #: when set, watching needs this token (?token=, an "auth" message, or a bearer header)
    token: str | None = field(default=None, metadata=option(
        "require this token to watch (default: $CAMTRACK_TOKEN, else none); "
        "the page takes it from its own URL, /?token=...", env="CAMTRACK_TOKEN", check=token_check))
    #: when set, a viewer may talk to a camera with --talk if it gives this token (a permission apart from watching)
    talk_token: str | None = field(default=None, metadata=option(
        "let viewers who give this token talk to cameras with --talk (default: $CAMTRACK_TALK_TOKEN, else "
        "nobody may talk); apart from --token, which lets them watch", env="CAMTRACK_TALK_TOKEN",
        check=token_check))
    #: origins, besides the server's own, whose pages may open the websocket ("*" for any)
    allow_origins: list[str] = field(default_factory=list, metadata=option(
        "let pages from this origin (https://host:port) open the websocket, repeatable; "
        "same-origin pages and non-browser clients are always allowed",
        flag="--allow-origin", metavar="ORIGIN", label="allowed origins"))
    #: names, besides the machine's own names and addresses, that requests may carry in Host ("*" for any)
    allow_hosts: list[str] = field(default_factory=list, metadata=option(
        "also answer requests for this host name (the Host header), repeatable; the machine's "
        "own names and addresses always work; '*' for any (no DNS-rebinding protection)",
        flag="--allow-host", metavar="NAME", label="allowed hosts"))
    #: reverse proxies whose X-Forwarded-For (else Forwarded) names the client (camtrack.access.TrustedProxies)
    trusted_proxies: list[str] = field(default_factory=list, metadata=option(
        "a reverse proxy's address or network (CIDR), repeatable: requests from it are counted, limited and "
        "logged as the client its X-Forwarded-For (else Forwarded) header names (the rightmost address "
        "that is not a trusted proxy; the proxy must set X-Forwarded-For, as nginx's and Caddy's recipes do, "
        "or a client's own passes through); that header is ignored from anyone else",
        flag="--trusted-proxy", metavar="ADDRESS", label="trusted proxies",
        check=lambda what, values: [proxy_check(what, v) for v in values]))
    #: the path everything is served under, "/camera/" behind a proxy that passes that prefix on
    base_path: str = field(default="/", metadata=option(
        "serve everything under this path, e.g. /camera/ behind a reverse proxy that passes the prefix on "
        "(default: {default})", metavar="PATH", check=lambda what, value: base_path_check(what, value)))
    #: every event change POSTed here (camtrack.events.webhook)
    webhook: str | None = field(default=None, metadata=option(
        "POST every event change as JSON to this http(s):// URL, in order, retried with back-off "
        "(docs/events.md)", metavar="URL", check=lambda what, value: webhook_check(what, value)))
    #: every event change to this MQTT broker (camtrack.events.mqtt)
    mqtt: str | None = field(default=None, metadata=option(
        "publish every event change and each camera's state to this MQTT broker: "
        "mqtt://[USER:PASS@]HOST[:PORT][/PREFIX] (mqtts:// for TLS; topics under PREFIX, default camtrack; "
        "docs/events.md)", metavar="URL", label="MQTT broker", check=lambda what, value: mqtt_check(what, value)))
    #: TLS certificate and key files; with both, the server speaks HTTPS/WSS
    cert: str | None = field(default=None, metadata=option("TLS certificate file (PEM): serve HTTPS and WSS"))
    key: str | None = field(default=None, metadata=option("TLS private key file (PEM), with --cert"))
    #: most frames a second an MJPEG client gets, and the JPEG quality it gets unless it asks
    mjpeg_fps: float = field(default=15.0, metadata=option(
        "most frames a second an MJPEG client gets (default: {default}; a client may ask for fewer with ?fps=)",
        metavar="FPS", label="MJPEG fps", check=between(0.1, 120, "between 0.1 and 120")))
    jpeg_quality: int = field(default=80, metadata=option(
        "JPEG quality of MJPEG and snapshots, 1-100 (default: {default}; ?quality= per request)",
        metavar="Q", label="JPEG quality", check=between(1, 100, "between 1 and 100")))
    #: seconds a source stays open after its last viewer leaves
    linger: float = field(default=3.0, metadata=option(
        "seconds the source stays open after the last viewer leaves (default: {default})",
        check=seconds(positive=False)))
    # not checked against LOG_LEVELS here: the config file may say "WARNING", which logging takes too
    log_level: str = field(default="info", metadata=option("log level (default: {default})", choices=LOG_LEVELS))
    #: retention of the clips of each --record directory
    record_max_age: float = field(default=0.0, metadata=option(
        "delete clips older than this many days, oldest first, protected ones kept (default: {default}, "
        "no age limit)", metavar="DAYS", check=between(0, 36500, "between 0 (no limit) and 36500 days")))
    record_max_size: float = field(default=0.0, metadata=option(
        "keep each --record directory's clips under this many MB in all, deleting the oldest first, "
        "protected ones kept (default: {default}, no cap)", metavar="MB",
        check=between(0, 1e9, "between 0 (no cap) and 1e9 MB")))
    record_min_free: float = field(default=256.0, metadata=option(
        "keep this many MB free on a --record directory's file system: the oldest clips go first, and "
        "recording stops (one log line) while there is still less, resuming by itself (default: {default})",
        metavar="MB", check=between(0, 1e9, "between 0 (no floor) and 1e9 MB")))
    #: seconds a peer may stay "disconnected" before it is closed
    disconnect_timeout: float = field(default=10.0, metadata=option(
        "seconds a peer may stay 'disconnected' before it is closed", check=seconds(), command_line=False))
    #: the cameras; when empty, one camera named "default" from the fields above
    cameras: list[CameraConfig] = field(default_factory=list)
    static_dir: Path = STATIC_DIR
    #: every camera's --process function as a Python callable, unless a camera has its own (embedding programs)
    process_function: ProcessFunction | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # the per-camera settings are checked again by CameraConfig, the default camera's included
        check_options(self)
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both --cert and --key")
        if self.rtsp_port and self.rtsp_port == self.port:
            raise ValueError(f"--rtsp-port {self.rtsp_port} is the web port (--port): give RTSP another (0: no RTSP)")
        if self.public_addresses and not self.webrtc_port:
            raise ValueError("--public-address needs a fixed --webrtc-port (not 0)")
        if self.turn_secret is not None and not any(url.startswith(("turn:", "turns:")) for url in self.ice_servers):
            raise ValueError("--turn-secret needs a TURN server: --ice-server turn:HOST:PORT")
        if not self.cameras:
            self.cameras = [self.camera("default", self.source, low_source=self.low_source)]
        if self.encoder != "shared" and any(c.mode == "passthrough" for c in self.cameras):
            raise ValueError("passthrough sends the camera's packets to every viewer: use --encoder shared")
        if self.encoder != "shared" and any(c.publish for c in self.cameras):
            raise ValueError("publishing to Janus sends the shared encoder's packets: use --encoder shared")
        if self.encoder != "shared" and any(c.record for c in self.cameras):
            raise ValueError("recording cuts clips from the shared encoder's packets: --record needs --encoder shared")
        if self.workers > 1 and self.encoder != "shared":
            raise ValueError("worker processes send the shared encoder's packets: --workers needs --encoder shared")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must differ: {', '.join(names)}")

    def camera(self, name: str, source: str, **overrides: Any) -> CameraConfig:
        """A camera with this server's defaults for whatever `overrides` leaves out."""
        defaults = {s.name: getattr(self, s.name) for s in settings(CameraSettings) if s.option.camera_default}
        defaults["process_function"] = self.process_function
        return CameraConfig(name=name, source=source, **{**defaults, **overrides})
