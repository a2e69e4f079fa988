"""Build and run a Dockerfile without a container runtime: a small interpreter for the instructions
the project's Dockerfile uses, on a temporary directory that stands for the image's filesystem.

What it models, and how:

* The base image (``FROM python:3.x-slim``) is this machine with a Python interpreter first on
  ``PATH`` as ``python``/``python3``: system paths (``/usr``, ``/bin``, ``/etc`` ...) are the host's.
  Every other absolute path the Dockerfile names (``/opt/...``, ``/models``, ``/var/lib/...``,
  ``/root/...``) lives under ``root``, the image's filesystem.
* Each stage starts on an empty ``root`` at the same host path (so absolute paths written into
  files, such as a virtual environment's scripts, stay valid when ``COPY --from`` carries them into
  a later stage); the finished stage is kept aside for ``COPY --from``.
* ``ARG``/``ENV`` with ``--build-arg`` overrides and ``$VAR``/``${VAR}`` substitution; ``RUN`` runs
  its shell form in ``/bin/sh`` with the stage's environment and build args, in its ``WORKDIR``;
  ``RUN --mount=type=cache,target=DIR`` is a persistent cache directory that is not left in the
  image. ``COPY`` honours ``.dockerignore`` (patterns with ``**``, ``!`` exceptions, last match wins).
* ``USER``, ``EXPOSE``, ``HEALTHCHECK`` and ``CMD`` are recorded for running the image.

An instruction or flag it does not model is an error, so the Dockerfile cannot grow something this
test silently skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Paths the base image shares with the host; any other absolute path is inside the image's root.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/dev", "/proc", "/sys", "/tmp")
# The host's package-index settings reach RUN, as a build machine's mirror settings would.
PASSTHROUGH_ENV = ("PIP_", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                   "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
_PATH_LITERAL = re.compile(r"(?<![\w$}:/.])/[A-Za-z0-9._/-]*")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class DockerfileError(Exception):
    pass


@dataclass
class Image:
    """What a built image runs: its last stage's settings."""

    root: Path
    env: dict[str, str]
    user: str | None = None
    workdir: str = "/"
    exposed: list[int] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)

    def host_path(self, path: str) -> str:
        return host_path(self.root, path)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    if pending:
        raise DockerfileError("the Dockerfile ends inside a continued line")
    return out


def host_path(root: Path, path: str) -> str:
    if not path.startswith("/") or any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS):
        return path
    return str(root) + path.rstrip("/") if path != "/" else str(root)


def map_literals(root: Path, text: str) -> str:
    """Absolute paths written in ``text`` itself (not inside variables) -> the image's root."""
    return _PATH_LITERAL.sub(lambda m: host_path(root, m.group(0)), text)


def _expand(text: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """.dockerignore: a pattern matches a path or any folder above it; the last match decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negate, pattern in patterns:
        if any(_glob(pattern).fullmatch(c) for c in candidates):
            result = not negate
    return result


def _glob(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` within one path element, ``**`` across any number."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def dockerignore(context: Path) -> list[tuple[bool, str]]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


class Builder:
    def __init__(self, dockerfile: Path, context: Path, workspace: Path, *, build_args: dict[str, str],
                 python: str, cache_dir: Path) -> None:
        self.dockerfile = dockerfile
        self.context = context
        self.workspace = workspace
        self.root = workspace / "rootfs"
        self.build_args = build_args
        self.cache_dir = cache_dir
        self.base_bin = workspace / "base-image-bin"  # the base image's python on PATH
        self.base_bin.mkdir(parents=True)
        for name in ("python", "python3"):
            (self.base_bin / name).symlink_to(python)
        self.stages: dict[str, Path] = {}
        self.ignore = dockerignore(context)
        self.log: list[str] = []

    def _base_env(self) -> dict[str, str]:
        return {"PATH": f"{self.base_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": host_path(self.root, "/root"),
                "LANG": "C.UTF-8"}

    def build(self) -> Image:
        global_args: dict[str, str] = {}
        image: Image | None = None
        stage_args: dict[str, str] = {}
        stage_index = 0
        for word, rest in instructions(self.dockerfile.read_text()):
            self.log.append(f"{word} {rest}")
            if word == "ARG" and image is None:
                name, value = self._arg(rest, global_args)
                global_args[name] = value
                continue
            if word == "FROM":
                image = self._from(rest, global_args, image, stage_index)
                stage_args = {}
                stage_index += 1
                continue
            if image is None:
                raise DockerfileError(f"{word} before FROM")
            variables = {**image.env, **stage_args}
            if word == "ARG":
                name, value = self._arg(rest, {**global_args, **variables})
                stage_args[name] = value
            elif word == "ENV":  # every value sees the variables as they were before this ENV
                image.env.update({name: _expand(map_literals(self.root, value), variables)
                                  for name, value in self._pairs(rest)})
            elif word == "WORKDIR":
                image.workdir = _expand(rest, variables)
                Path(image.host_path(image.workdir)).mkdir(parents=True, exist_ok=True)
            elif word == "COPY":
                self._copy(image, _expand(rest, variables))
            elif word == "RUN":
                self._run(image, rest, stage_args)
            elif word == "USER":
                image.user = _expand(rest, variables)
            elif word == "EXPOSE":
                image.exposed += [int(p.split("/")[0]) for p in _expand(rest, variables).split()]
            elif word == "HEALTHCHECK":
                _, _, command = rest.partition(" CMD ")
                image.healthcheck = self._exec_form(command)
            elif word == "CMD":
                image.cmd = self._exec_form(rest)
            else:
                raise DockerfileError(f"the interpreter does not model {word}")
        if image is None:
            raise DockerfileError("no FROM")
        return image

    # -- instructions --------------------------------------------------------------------
    def _arg(self, rest: str, variables: dict[str, str]) -> tuple[str, str]:
        name, _, default = rest.partition("=")
        return name, self.build_args.get(name, _expand(default, variables))

    @staticmethod
    def _pairs(rest: str) -> list[tuple[str, str]]:
        words = shlex.split(rest)
        if "=" not in words[0]:
            return [(words[0], " ".join(words[1:]))]
        return [(name, value) for name, _, value in (w.partition("=") for w in words)]

    @staticmethod
    def _exec_form(rest: str) -> list[str]:
        if not rest.startswith("["):
            raise DockerfileError(f"use the exec (JSON) form: {rest}")
        args = json.loads(rest)
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
        return args

    def _from(self, rest: str, global_args: dict[str, str], previous: Image | None, index: int) -> Image:
        words = _expand(rest, global_args).split()
        base = words[0]
        if not re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim(-\w+)?", base):
            raise DockerfileError(f"the interpreter models python:3.x-slim base images, not {base}")
        if previous is not None:  # keep the finished stage for COPY --from; the next starts empty
            kept = self.workspace / f"stage-{index - 1}"
            self.root.rename(kept)
            self.stages = {name: kept if path == self.root else path for name, path in self.stages.items()}
            self.stages[str(index - 1)] = kept
        self.root.mkdir()
        self.root.chmod(0o755)
        if len(words) == 3 and words[1].upper() == "AS":
            self.stages[words[2]] = self.root
        return Image(root=self.root, env=self._base_env())

    def _copy(self, image: Image, rest: str) -> None:
        words = rest.split()
        source_root = self.context
        from_context = True
        while words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--from="):
                source_root = self.stages[flag.split("=", 1)[1]]
                from_context = False
            else:
                raise DockerfileError(f"COPY {flag} is not modelled")
        *sources, dest = words
        dest_dir = dest.endswith("/") or len(sources) > 1
        target = Path(image.host_path(dest if dest.startswith("/") else f"{image.workdir.rstrip('/')}/{dest}"))
        for src in sources:
            origin = (source_root / src.lstrip("/")) if not from_context else self.context / src
            if from_context and ignored(origin.relative_to(self.context).as_posix(), self.ignore):
                raise DockerfileError(f"COPY: {src} is excluded by .dockerignore")
            if not origin.exists():
                raise DockerfileError(f"COPY: {src} does not exist")
            if origin.is_dir():
                self._copy_tree(origin, target, from_context)
            else:
                into = target / origin.name if dest_dir or target.is_dir() else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)

    def _copy_tree(self, origin: Path, target: Path, from_context: bool) -> None:
        for path in sorted(origin.rglob("*")):
            if from_context and ignored(path.relative_to(self.context).as_posix(), self.ignore):
                continue
            out = target / path.relative_to(origin)
            if path.is_symlink():
                out.parent.mkdir(parents=True, exist_ok=True)
                out.symlink_to(os.readlink(path))
            elif path.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)

    def _run(self, image: Image, rest: str, stage_args: dict[str, str]) -> None:
        caches: list[Path] = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            options = dict(o.split("=", 1) for o in flag.removeprefix("--mount=").split(","))
            if not flag.startswith("--mount=") or options.get("type") != "cache":
                raise DockerfileError(f"RUN {flag} is not modelled")
            mount = Path(image.host_path(options["target"]))
            mount.parent.mkdir(parents=True, exist_ok=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            mount.symlink_to(self.cache_dir)  # removed after the step: a cache mount is not in the image
            caches.append(mount)
            rest = rest.strip()
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSTHROUGH_ENV)}
        env.update(image.env)
        env.update(stage_args)
        try:
            done = subprocess.run(["/bin/sh", "-c", map_literals(self.root, rest)], env=env,
                                  cwd=image.host_path(image.workdir), capture_output=True, text=True, timeout=900)
        finally:
            for mount in caches:
                mount.unlink()
        if done.returncode != 0:
            raise DockerfileError(f"RUN {rest} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def run_argv(image: Image, argv: list[str], port_map: dict[int, int]) -> list[str]:
    """A CMD or HEALTHCHECK argv on this machine: image paths mapped, container ports published."""
    out = []
    for arg in argv:
        arg = image.host_path(arg) if arg.startswith("/") else arg
        for inside, outside in port_map.items():
            arg = arg.replace(f":{inside}/", f":{outside}/")
        out.append(arg)
    for i, arg in enumerate(out[:-1]):
        if arg == "--port" and int(out[i + 1]) in port_map:
            out[i + 1] = str(port_map[int(out[i + 1])])
    return out


def runtime_env(image: Image, extra: dict[str, str]) -> dict[str, str]:
    """What the container's process sees: the image's ENV (no build args) and ``docker run -e``."""
    return {**image.env, "HOME": str(image.root), "HOSTNAME": "imgclf-test", **extra}
