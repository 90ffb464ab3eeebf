"""Operator input devices for the teleop node: terminal keyboard, SpaceMouse, gamepad.

Every device has ``connect()``, ``poll(now) -> TeleopCommand`` and ``close()``.
A :class:`TeleopCommand` is device independent: a normalised twist (each
component in [-1, 1], base frame ``[vx, vy, vz, wx, wy, wz]``; the node scales
it to m/s and rad/s), whether the operator has control, a gripper request
(``"close"``/``"open"`` on a button press, else ``None``) and episode events.

The mapping from raw device state to commands is pure (:class:`SpaceMouseMapper`,
:class:`GamepadMapper`, :class:`KeyMapper`) so it is tested with recorded device
events; the device classes only read the hardware. A device that is not there
raises :class:`TeleopDeviceError` with a message naming the device and the fix.

Intervention: moving a device past its dead zone takes control (the operator
always wins over a policy); control is handed back ``release_after`` seconds after
the last motion, or at once with the device's toggle (keyboard: space).
"""

from __future__ import annotations

import os
import select
import sys
import termios
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

EVENTS = ("start", "success", "failure", "reset", "abort")


class TeleopDeviceError(RuntimeError):
    """A teleop device is missing or unusable; the message says which and how to fix it."""


@dataclass
class TeleopCommand:
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))  # normalised, base frame
    intervening: bool = False
    gripper: str | None = None  # "close" | "open" | None (no request this poll)
    events: list[str] = field(default_factory=list)


class TeleopDevice(Protocol):
    name: str

    def connect(self) -> None: ...

    def poll(self, now: float) -> TeleopCommand: ...

    def close(self) -> None: ...


class Intervention:
    """Control follows motion: taken on motion, released ``release_after`` s after the last one.

    ``toggle()`` flips a sticky hold (the operator keeps control without moving).
    """

    def __init__(self, release_after: float = 0.5):
        self.release_after = float(release_after)
        self.sticky = False
        self._last_motion = -np.inf

    def toggle(self, now: float) -> None:
        self.sticky = not (self.sticky or self.active(now))
        if not self.sticky:
            self._last_motion = -np.inf

    def motion(self, now: float) -> None:
        self._last_motion = now

    def active(self, now: float) -> bool:
        return self.sticky or (now - self._last_motion) <= self.release_after


def _edges(buttons: Sequence[int], prev: Sequence[int]) -> list[int]:
    """Indices of buttons that went from released to pressed."""
    return [i for i, b in enumerate(buttons) if b and not (i < len(prev) and prev[i])]


# ------------------------------------------------------------------ SpaceMouse
@dataclass
class SpaceMouseMapping:
    # state fields feeding [vx, vy, vz, wx, wy, wz] and their signs (HIL-SERL's mounting)
    axes: tuple[str, ...] = ("y", "x", "z", "roll", "pitch", "yaw")
    signs: tuple[float, ...] = (-1.0, 1.0, 1.0, -1.0, -1.0, -1.0)
    deadzone: float = 0.05
    close_button: int = 0  # left button closes (grasps)
    open_button: int = 1  # right button opens


class SpaceMouseMapper:
    """pyspacemouse states -> commands. Buttons: left close, right open (they also take control)."""

    def __init__(self, mapping: SpaceMouseMapping | None = None, release_after: float = 0.5):
        self.m = mapping or SpaceMouseMapping()
        self.intervention = Intervention(release_after)
        self._prev_buttons: list[int] = []

    def __call__(self, state: Any, now: float) -> TeleopCommand:
        raw = np.array([float(getattr(state, a)) * s for a, s in zip(self.m.axes, self.m.signs, strict=True)])
        twist = np.where(np.abs(raw) > self.m.deadzone, np.clip(raw, -1.0, 1.0), 0.0)
        buttons = [int(b) for b in getattr(state, "buttons", [])]
        pressed = _edges(buttons, self._prev_buttons)
        self._prev_buttons = buttons
        gripper = None
        if self.m.close_button in pressed:
            gripper = "close"
        elif self.m.open_button in pressed:
            gripper = "open"
        if np.any(twist != 0.0) or gripper is not None:
            self.intervention.motion(now)
        return TeleopCommand(twist, self.intervention.active(now), gripper, [])


class SpaceMouseDevice:
    """A 3Dconnexion SpaceMouse through pyspacemouse (HID, no X needed)."""

    name = "spacemouse"

    def __init__(self, mapper: SpaceMouseMapper | None = None):
        self.mapper = mapper or SpaceMouseMapper()
        self._dev: Any = None

    def connect(self) -> None:
        try:
            import pyspacemouse
        except ImportError as e:
            raise TeleopDeviceError(
                "SpaceMouse: the pyspacemouse package is missing; install the rig extras "
                "(uv pip install -e '.[rig]') or use teleop.device=keyboard"
            ) from e
        try:
            self._dev = pyspacemouse.open()
        except RuntimeError as e:
            if "HID API" in str(e):
                fix = "install the HID library: sudo apt-get install libhidapi-hidraw0"
            else:
                fix = ("plug in the SpaceMouse and allow access to /dev/hidraw* (a udev rule: "
                       'KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0666"; 046d on older models), '
                       "or use teleop.device=keyboard (works over SSH)")
            raise TeleopDeviceError(f"SpaceMouse not available ({e}): {fix}") from e
        if not self._dev:
            raise TeleopDeviceError("SpaceMouse not found: plug it in or use teleop.device=keyboard")

    def poll(self, now: float) -> TeleopCommand:
        state = self._dev.read()
        return self.mapper(state, now)

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            dev.close()


# --------------------------------------------------------------------- gamepad
@dataclass
class GamepadMapping:
    """Indices for an Xbox-style pad under SDL2 (Linux xpad layout)."""

    # (axis index, sign) per twist component; -1 = not mapped
    axes: tuple[int, ...] = (1, 0, 4, -1, -1, 3)
    signs: tuple[float, ...] = (-1.0, -1.0, -1.0, 1.0, 1.0, -1.0)
    hat_roll_pitch: bool = True  # d-pad: up/down roll (wx), left/right pitch (wy)
    deadzone: float = 0.15
    close_button: int = 0  # A
    open_button: int = 1  # B
    toggle_button: int = 2  # X: keep / hand back control
    event_buttons: dict[int, str] = field(
        default_factory=lambda: {7: "success", 6: "failure", 3: "reset"}  # Start, Back, Y
    )


class GamepadMapper:
    """Gamepad snapshots (axes, buttons, hat) -> commands."""

    def __init__(self, mapping: GamepadMapping | None = None, release_after: float = 0.5):
        self.m = mapping or GamepadMapping()
        self.intervention = Intervention(release_after)
        self._prev_buttons: list[int] = []

    def __call__(
        self, axes: Sequence[float], buttons: Sequence[int], hat: tuple[int, int], now: float
    ) -> TeleopCommand:
        raw = np.zeros(6)
        for k, (i, s) in enumerate(zip(self.m.axes, self.m.signs, strict=True)):
            if 0 <= i < len(axes):
                raw[k] = float(axes[i]) * s
        if self.m.hat_roll_pitch:
            raw[3] += float(hat[1]) * self.m.signs[3]
            raw[4] += float(hat[0]) * self.m.signs[4]
        twist = np.where(np.abs(raw) > self.m.deadzone, np.clip(raw, -1.0, 1.0), 0.0)
        buttons = [int(b) for b in buttons]
        pressed = _edges(buttons, self._prev_buttons)
        self._prev_buttons = buttons
        gripper = "close" if self.m.close_button in pressed else "open" if self.m.open_button in pressed else None
        if self.m.toggle_button in pressed:
            self.intervention.toggle(now)
        elif np.any(twist != 0.0) or gripper is not None:
            self.intervention.motion(now)
        events = [self.m.event_buttons[i] for i in pressed if i in self.m.event_buttons]
        return TeleopCommand(twist, self.intervention.active(now), gripper, events)


class GamepadDevice:
    """The first joystick pygame sees (SDL2, no display needed)."""

    name = "gamepad"

    def __init__(self, mapper: GamepadMapper | None = None, index: int = 0):
        self.mapper = mapper or GamepadMapper()
        self.index = int(index)
        self._pg: Any = None
        self._js: Any = None

    def connect(self) -> None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no X server on the rig PC over SSH
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as e:
            raise TeleopDeviceError(
                "gamepad: the pygame package is missing; install the rig extras "
                "(uv pip install -e '.[rig]') or use teleop.device=keyboard"
            ) from e
        pygame.display.init()
        pygame.joystick.init()
        n = pygame.joystick.get_count()
        if n <= self.index:
            pygame.joystick.quit()
            raise TeleopDeviceError(
                f"gamepad: no joystick #{self.index} (pygame sees {n}); plug in the gamepad "
                "(check `ls /dev/input/js*` and that this user is in the 'input' group), "
                "or use teleop.device=keyboard (works over SSH)"
            )
        self._pg = pygame
        self._js = pygame.joystick.Joystick(self.index)
        self._js.init()

    def poll(self, now: float) -> TeleopCommand:
        self._pg.event.pump()
        js = self._js
        axes = [js.get_axis(i) for i in range(js.get_numaxes())]
        buttons = [js.get_button(i) for i in range(js.get_numbuttons())]
        hat = js.get_hat(0) if js.get_numhats() else (0, 0)
        return self.mapper(axes, buttons, hat, now)

    def close(self) -> None:
        if self._pg is not None:
            self._pg.joystick.quit()
            self._pg = self._js = None


# -------------------------------------------------------------------- keyboard
KEY_HELP = """\
teleop keys (this terminal):  space take/hand back control
  w/s  +x/-x   a/d  +y/-y   r/f  +z/-z   (arrow keys: x/y)
  i/k  roll    j/l  pitch   u/o  yaw
  c  close gripper   v  open gripper
  Enter start   y success   n failure   b reset   q abort   Ctrl-C quit
"""

_MOVE_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "i": (3, 1.0), "k": (3, -1.0), "j": (4, 1.0), "l": (4, -1.0), "u": (5, 1.0), "o": (5, -1.0),
    "UP": (0, 1.0), "DOWN": (0, -1.0), "LEFT": (1, 1.0), "RIGHT": (1, -1.0),
}
_EVENT_KEYS = {"\r": "start", "\n": "start", "y": "success", "n": "failure", "b": "reset", "q": "abort"}
_ARROWS = {"A": "UP", "B": "DOWN", "C": "RIGHT", "D": "LEFT"}


def parse_keys(data: str) -> list[str]:
    """Terminal bytes -> key names (arrow escape sequences become UP/DOWN/LEFT/RIGHT)."""
    keys, i = [], 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1 : i + 2] in ("[", "O") and data[i + 2 : i + 3] in _ARROWS:
            keys.append(_ARROWS[data[i + 2]])
            i += 3
            continue
        keys.append(data[i])
        i += 1
    return keys


class KeyMapper:
    """Key presses -> commands.

    A terminal reports presses, not releases, and repeats a held key (after a
    delay of ~0.25-0.6 s, then ~30/s). A key therefore moves its axis until
    ``first_hold`` s after a single press, and ``repeat_hold`` s after an
    auto-repeat: holding a key moves smoothly, releasing it stops within
    ``repeat_hold``. Any motion key takes control; space toggles it.
    """

    def __init__(self, first_hold: float = 0.35, repeat_hold: float = 0.12, release_after: float = 0.5):
        self.first_hold, self.repeat_hold = float(first_hold), float(repeat_hold)
        self.intervention = Intervention(release_after)
        self._until = np.full(6, -np.inf)  # per axis: moving until this time
        self._dir = np.zeros(6)
        self._last_press: dict[str, float] = {}

    def __call__(self, keys: Sequence[str], now: float) -> TeleopCommand:
        gripper, events = None, []
        for key in keys:
            if key in _MOVE_KEYS:
                axis, sign = _MOVE_KEYS[key]
                repeat = now - self._last_press.get(key, -np.inf) <= self.first_hold
                self._last_press[key] = now
                self._dir[axis] = sign
                self._until[axis] = now + (self.repeat_hold if repeat else self.first_hold)
            elif key == " ":
                self.intervention.toggle(now)
            elif key == "c":
                gripper = "close"
            elif key == "v":
                gripper = "open"
            elif key in _EVENT_KEYS:
                events.append(_EVENT_KEYS[key])
            elif key == "\x03":
                raise KeyboardInterrupt
        twist = np.where(now <= self._until, self._dir, 0.0)
        if np.any(twist != 0.0) or gripper is not None:
            self.intervention.motion(now)
        return TeleopCommand(twist, self.intervention.active(now), gripper, events)


class KeyboardDevice:
    """Keys from a terminal in cbreak mode (no echo, no line buffering; works over SSH, no X).

    Reads the controlling terminal on stdin by default, or the terminal at
    ``tty_path`` (e.g. another SSH session's ``/dev/pts/N``). Output
    processing and Ctrl-C stay on, so logs in the same terminal still print.
    """

    name = "keyboard"

    def __init__(self, mapper: KeyMapper | None = None, tty_path: str = "", fd: int | None = None,
                 show_help: bool = True):
        self.mapper = mapper or KeyMapper()
        self.tty_path, self._given_fd = tty_path, fd
        self.show_help = show_help
        self._fd: int | None = None
        self._own_fd = False
        self._saved: list | None = None

    def connect(self) -> None:
        if self._given_fd is not None:
            fd = self._given_fd
        elif self.tty_path:
            try:
                fd = os.open(self.tty_path, os.O_RDWR | os.O_NOCTTY)
            except OSError as e:
                raise TeleopDeviceError(
                    f"keyboard: cannot open terminal {self.tty_path!r} ({e}); run `tty` in the operator's "
                    "terminal and pass that path (-p tty_path:=/dev/pts/N)"
                ) from e
            self._own_fd = True
        else:
            fd = sys.stdin.fileno() if sys.stdin is not None else -1
        if fd < 0 or not os.isatty(fd):
            if self._own_fd:
                os.close(fd)
            raise TeleopDeviceError(
                "keyboard: stdin is not a terminal; run `teleop-node` (or `rig-up`) in a terminal or "
                "over `ssh -t`, pass another terminal with -p tty_path:=/dev/pts/N, "
                "or use teleop.device=spacemouse|gamepad|none"
            )
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        mode = termios.tcgetattr(fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflags: no line buffering, no echo; ISIG stays
        mode[6][termios.VMIN] = 0
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        if self.show_help:
            try:
                os.write(fd, KEY_HELP.replace("\n", "\r\n").encode())
            except OSError:
                pass

    def read_keys(self) -> list[str]:
        data = b""
        while self._fd is not None and select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 1024)
            if not chunk:
                break
            data += chunk
        return parse_keys(data.decode(errors="ignore"))

    def poll(self, now: float) -> TeleopCommand:
        return self.mapper(self.read_keys(), now)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._saved is not None:
            try:
                termios.tcsetattr(fd, termios.TCSANOW, self._saved)
            except termios.error:
                pass
        if self._own_fd:
            os.close(fd)


def make_device(kind: str, tty_path: str = "", release_after: float = 0.5) -> TeleopDevice:
    """The device for ``teleop.device``: keyboard, spacemouse or gamepad."""
    if kind == "keyboard":
        return KeyboardDevice(KeyMapper(release_after=release_after), tty_path=tty_path)
    if kind == "spacemouse":
        return SpaceMouseDevice(SpaceMouseMapper(release_after=release_after))
    if kind == "gamepad":
        return GamepadDevice(GamepadMapper(release_after=release_after))
    raise TeleopDeviceError(f"teleop.device={kind!r} is not a device: use keyboard, spacemouse, gamepad or none")
