"""Group administration (ListGroups, DescribeGroups, DeleteGroups) driven with in-memory
frames: groups exist through committed offsets alone (no membership yet), so each is "Empty"."""

from __future__ import annotations

from pathlib import Path

import pytest

from generated.delete_groups_request import DeleteGroupsRequest
from generated.delete_groups_response import DeleteGroupsResponse
from generated.describe_groups_request import DescribeGroupsRequest
from generated.describe_groups_response import DescribeGroupsResponse
from generated.list_groups_request import ListGroupsRequest
from generated.list_groups_response import ListGroupsResponse
from generated.registry import BROKER_APIS
from tests.test_broker_admin import Client, run
from tests.test_broker_offsets import GROUP_ID_NOT_FOUND, commit, fetch

LIST_GROUPS, DESCRIBE_GROUPS, DELETE_GROUPS = 16, 15, 42
OMITTED = -2147483648


async def list_groups(
    c: Client, version: int, states: list[str] | None = None, types: list[str] | None = None
) -> list[tuple[str, str, str, str]]:
    body = ListGroupsRequest(states_filter=states or [], types_filter=types or [])
    resp: ListGroupsResponse = await c.call(LIST_GROUPS, version, body)
    assert resp.error_code == 0
    return [(g.group_id, g.protocol_type, g.group_state, g.group_type) for g in resp.groups]


async def describe(
    c: Client, version: int, *groups: str
) -> list[tuple[int, str, str, str, str, int, int]]:
    body = DescribeGroupsRequest(groups=list(groups), include_authorized_operations=version >= 3)
    resp: DescribeGroupsResponse = await c.call(DESCRIBE_GROUPS, version, body)
    return [
        (
            g.error_code,
            g.group_id,
            g.group_state,
            g.protocol_type,
            g.protocol_data,
            len(g.members),
            g.authorized_operations,
        )
        for g in resp.groups
    ]


async def delete_groups(c: Client, version: int, *groups: str) -> dict[str, int]:
    body = DeleteGroupsRequest(groups_names=list(groups))
    resp: DeleteGroupsResponse = await c.call(DELETE_GROUPS, version, body)
    return {r.group_id: r.error_code for r in resp.results}


def test_served_versions() -> None:
    assert {k: BROKER_APIS[k] for k in (15, 16, 42)} == {15: (0, 5), 16: (0, 5), 42: (0, 2)}


@pytest.mark.parametrize("version", [0, 3, 4, 5])
def test_list_groups(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        assert await list_groups(c, version) == []
        await commit(c, "b", ("t", 0, 1, -1, ""))
        await commit(c, "a/x%y", ("t", 1, 2, -1, ""), ("t", 0, 3, -1, ""))  # escaped in keys
        state = "Empty" if version >= 4 else ""
        kind = "classic" if version >= 5 else ""
        assert await list_groups(c, version) == [
            ("a/x%y", "", state, kind),
            ("b", "", state, kind),
        ]

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [4, 5])
def test_list_groups_filters(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await commit(c, "g", ("t", 0, 1, -1, ""))
        kind = "classic" if version >= 5 else ""
        assert await list_groups(c, version, states=["Empty"]) == [("g", "", "Empty", kind)]
        assert await list_groups(c, version, states=["Stable", "empty"]) != []
        assert await list_groups(c, version, states=["Stable", "Dead"]) == []
        if version >= 5:
            assert await list_groups(c, version, types=["classic"]) == [("g", "", "Empty", kind)]
            assert await list_groups(c, version, types=["consumer"]) == []
            assert await list_groups(c, version, states=["Empty"], types=["share"]) == []

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [0, 2, 3, 5])
def test_describe_groups(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await commit(c, "g", ("t", 0, 1, -1, ""))
        ops = OMITTED  # the default, at every version (-2147483648 is never encoded before v3)
        assert await describe(c, version, "g", "unknown", "") == [
            (0, "g", "Empty", "", "", 0, ops),
            (0, "unknown", "Dead", "", "", 0, ops),
            (0, "", "Dead", "", "", 0, ops),
        ]

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_delete_groups(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        await commit(c, "g", ("t", 0, 10, -1, "m"), ("t", 1, 11, -1, ""))
        await commit(c, "g/sub", ("t", 0, 20, -1, ""))  # a prefix-sharing id is untouched
        await commit(c, "keep", ("t", 0, 30, -1, ""))
        assert await delete_groups(c, version, "g", "unknown", "", "g") == {
            "g": 0,
            "unknown": GROUP_ID_NOT_FOUND,
            "": GROUP_ID_NOT_FOUND,
        }
        assert [g for g, *_ in await list_groups(c, 5)] == ["g/sub", "keep"]
        assert await fetch(c, "g", {"t": [0, 1]}) == (
            0,
            {("t", 0): (-1, -1, "", 0), ("t", 1): (-1, -1, "", 0)},
        )
        assert await fetch(c, "g/sub", {"t": [0]}) == (0, {("t", 0): (20, -1, "", 0)})
        assert (await describe(c, 5, "g"))[0][2] == "Dead"
        assert await delete_groups(c, version, "g") == {"g": GROUP_ID_NOT_FOUND}
        # A deleted group may commit again: it exists anew.
        await commit(c, "g", ("t", 0, 5, -1, ""))
        assert await fetch(c, "g", {"t": [0]}) == (0, {("t", 0): (5, -1, "", 0)})

    run(tmp_path, scenario)


def test_empty_group_id_with_commits_is_deletable(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await commit(c, "", ("t", 0, 1, -1, ""))  # OffsetCommit accepts "", as Kafka does
        assert [g for g, *_ in await list_groups(c, 3)] == [""]
        assert (await describe(c, 5, ""))[0][:3] == (0, "", "Empty")
        assert await delete_groups(c, 2, "") == {"": 0}
        assert await list_groups(c, 3) == []

    run(tmp_path, scenario)
