"""Event ids: canonical random UUID4s, unique, and never shared by a forked worker."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from services.gateway.ids import event_id


def test_event_ids_are_canonical_uuid4s_and_unique() -> None:
    ids = [event_id() for _ in range(100_000)]  # ~390 pool refills
    assert len(set(ids)) == len(ids)
    for text in ids[:2000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    event_id()  # the parent holds a partly used pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the next ids it would make
        os.write(write, ",".join(event_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split(",")
    os.close(read)
    parent = [event_id() for _ in range(10)]
    assert len(child) == 10 and not set(child) & set(parent)
