"""Attribution of a call to a prompt version. Pure: the prompt registry is handed in.

A call names its prompt (``prompt_key``) and maybe a version. Without a version it belongs to
the version that was active *when the call was made*: the activation history is append-only, so
replaying an old event attributes it the same way as the first time.

A prompt key or version never seen before is registered on first use (``Registration``), so
that a team can start sending ``prompt_key`` without setting anything up first.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas.events import UsageEvent


@dataclass(frozen=True)
class Registration:
    """A prompt or version to create because an event used it first."""

    org_id: str
    prompt_key: str
    version: int
    model: str
    at: datetime
    new_prompt: bool  # the prompt itself is new: also create it and activate this version


@dataclass
class PromptRegistry:
    # (org, prompt_key) -> activation times (sorted) and the version activated at each
    _activation_times: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)
    _activation_versions: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    _versions: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        versions: Iterable[tuple[str, str, int]],
        activations: Iterable[tuple[str, str, int, datetime]],
    ) -> PromptRegistry:
        registry = cls()
        for org, key, version in versions:
            registry._versions.setdefault((org, key), set()).add(version)
        for org, key, version, at in sorted(activations, key=lambda a: (a[0], a[1], a[3], a[2])):
            registry._activation_times.setdefault((org, key), []).append(at)
            registry._activation_versions.setdefault((org, key), []).append(version)
        return registry

    def knows(self, org_id: str, prompt_key: str) -> bool:
        return (org_id, prompt_key) in self._versions

    def active_version(self, org_id: str, prompt_key: str, at: datetime) -> int | None:
        times = self._activation_times.get((org_id, prompt_key))
        if not times:
            return None
        versions = self._activation_versions[(org_id, prompt_key)]
        i = bisect.bisect_right(times, at)
        # A call made before the first activation (e.g. the prompt was registered just after)
        # belongs to the first version that was ever active.
        return versions[i - 1] if i else versions[0]

    def record(self, reg: Registration) -> None:
        """Remember a registration so later events in the same batch see it."""
        self._versions.setdefault((reg.org_id, reg.prompt_key), set()).add(reg.version)
        if reg.new_prompt:
            self._activation_times.setdefault((reg.org_id, reg.prompt_key), []).append(reg.at)
            self._activation_versions.setdefault((reg.org_id, reg.prompt_key), []).append(reg.version)

    def has_version(self, org_id: str, prompt_key: str, version: int) -> bool:
        return version in self._versions.get((org_id, prompt_key), ())


def attribute(event: UsageEvent, registry: PromptRegistry) -> tuple[int, Registration | None]:
    """The prompt version of the call (0 when it names no prompt), and what to register first."""
    if not event.prompt_key:
        return 0, None
    org, key = event.org_id, event.prompt_key
    model = event.model_requested or event.model
    if event.prompt_version is not None:
        version = event.prompt_version
        if registry.has_version(org, key, version):
            return version, None
        return version, Registration(org, key, version, model, event.started_at, not registry.knows(org, key))
    active = registry.active_version(org, key, event.started_at)
    if active is not None:
        return active, None
    return 1, Registration(org, key, 1, model, event.started_at, True)
