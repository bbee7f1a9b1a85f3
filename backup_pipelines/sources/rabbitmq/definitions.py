"""The definitions document: what it must hold, its figures, and one vhost's share of it."""

from __future__ import annotations

from typing import Any

SECTIONS = (
    "vhosts",
    "users",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
)
COUNTED = ("vhosts", "users", "permissions", "policies", "queues", "exchanges", "bindings")
PER_VHOST = (
    "permissions",
    "topic_permissions",
    "parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
)


def counts(definitions: dict[str, Any]) -> dict[str, int]:
    return {section: len(definitions.get(section) or []) for section in COUNTED}


def broker_version(definitions: dict[str, Any]) -> str:
    return str(definitions.get("rabbitmq_version") or definitions.get("rabbit_version") or "")


def structure_problems(definitions: object, expected: dict[str, int]) -> list[str]:
    """What keeps this document from being a restorable export of the broker (empty = sound)."""
    if not isinstance(definitions, dict):
        return ["definitions.json is not a JSON object"]
    problems = [
        f"definitions.json has no {section!r} list"
        for section in SECTIONS
        if not isinstance(definitions.get(section, []), list)
        or (section in COUNTED and section not in definitions)
    ]
    problems += [
        f"definitions.json's {section!r} holds an item that is not a JSON object"
        for section in SECTIONS
        if isinstance(definitions.get(section), list)
        and not all(isinstance(item, dict) for item in definitions[section])
    ]
    found = counts(definitions)
    problems += [
        f"definitions.json holds {found[section]} {section}, the manifest says {number}"
        for section, number in expected.items()
        if found.get(section) != number
    ]
    return problems


def is_built_in(kind: object, name: object) -> bool:
    """The default exchange and the `amq.*` ones: every vhost has them without a definition."""
    return kind == "exchange" and (name == "" or str(name).startswith("amq."))


def reference_problems(definitions: dict[str, Any]) -> list[str]:
    """What an import would refuse or silently lose: an object in a vhost the export does not
    define, a permission for an unknown user, a binding to an exchange or queue not there."""
    return sorted(set(_unknown_owners(definitions) + _dangling_bindings(definitions)))


def _unknown_owners(definitions: dict[str, Any]) -> list[str]:
    vhosts = {item.get("name") for item in definitions.get("vhosts") or []}
    users = {item.get("name") for item in definitions.get("users") or []}
    problems = [
        f"{section} name the vhost {item.get('vhost')!r}, which the export does not define"
        for section in PER_VHOST
        for item in definitions.get(section) or []
        if item.get("vhost") not in vhosts
    ]
    problems += [
        f"a permission names the user {item.get('user')!r}, which the export does not define"
        for section in ("permissions", "topic_permissions")
        for item in definitions.get(section) or []
        if item.get("user") not in users
    ]
    return problems


def _dangling_bindings(definitions: dict[str, Any]) -> list[str]:
    problems = []
    defined = {
        (kind, item.get("vhost"), item.get("name"))
        for kind, section in (("exchange", "exchanges"), ("queue", "queues"))
        for item in definitions.get(section) or []
    }
    for binding in definitions.get("bindings") or []:
        vhost, source = binding.get("vhost"), binding.get("source", "")
        ends = [("exchange", source), (binding.get("destination_type"), binding.get("destination"))]
        for kind, name in ends:
            if not is_built_in(kind, name) and (kind, vhost, name) not in defined:
                problems.append(f"a binding in {vhost!r} names the {kind} {name!r}, not defined")
    return problems


def only_vhost(definitions: dict[str, Any], vhost: str) -> dict[str, Any]:
    """The part of an export that restores one vhost: it, its objects, and its users."""
    if not any(item.get("name") == vhost for item in definitions.get("vhosts", [])):
        names = ", ".join(item.get("name", "?") for item in definitions.get("vhosts", []))
        raise KeyError(f"the snapshot has no vhost {vhost!r} (it has: {names})")
    part: dict[str, Any] = {
        section: [item for item in definitions.get(section, []) if item.get("vhost") == vhost]
        for section in PER_VHOST
    }
    users = {item["user"] for item in part["permissions"] + part["topic_permissions"]}
    part["vhosts"] = [item for item in definitions["vhosts"] if item.get("name") == vhost]
    part["users"] = [item for item in definitions.get("users", []) if item.get("name") in users]
    part["global_parameters"] = []
    return part
