"""Parsing of query parameters shared by the read APIs: every failure is a 400 that names the
parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from litestar.exceptions import ValidationException


def bad(name: str, message: str) -> ValidationException:
    return ValidationException(f"{name}: {message}")


def parse_instant(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` means the whole day (UTC): its start, or for an end the start of the next
    day. A full ISO 8601 timestamp is taken as is (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=timezone.utc)
            return start + timedelta(days=1) if end else start
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+") if "T" in value else value)
    except ValueError:
        raise bad(name, f"expected a date (YYYY-MM-DD) or an ISO 8601 timestamp, got {value!r}") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class Range:
    """A half-open UTC time range [start, end)."""

    start: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last day the range touches (for day rollups)."""
        return (self.end - timedelta(microseconds=1)).date()


def time_range(start: str | None, end: str | None, *, names: tuple[str, str] = ("start_date", "end_date"),
               default_days: int = 30) -> Range:
    now = datetime.now(timezone.utc)
    s = parse_instant(start, names[0])
    e = parse_instant(end, names[1], end=True)
    if e is None:
        e = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=timezone.utc)
    if s is None:
        s = e - timedelta(days=default_days)
    if e <= s:
        raise bad(names[1], "must be after the start")
    return Range(s, e)


def pagination(page: int, limit: int, total: int) -> dict[str, Any]:
    """Page information for a paginated answer: ``total`` items, ``limit`` a page."""
    pages = (total + limit - 1) // limit
    return {"page": page, "limit": limit, "totalCount": total, "totalPages": pages, "hasMore": page < pages}


def positive_int(value: int, name: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo} and {hi}, got {value}")
    return value
