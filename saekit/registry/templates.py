"""Template rows (named training configurations): each function is one registry transaction."""

from __future__ import annotations

from saekit.registry._db import transaction
from saekit.registry.jobs import utcnow
from saekit.workspace import Workspace

COLUMNS = ("name", "description", "sae_config", "train_config", "favourite", "created_at", "updated_at")


def put_template(ws: Workspace, name: str, *, description: str, sae_config: str, train_config: str,
                 favourite: bool, replace: bool) -> bool:
    """Insert (or, with ``replace``, overwrite keeping ``created_at``); False when the name exists and not ``replace``."""
    now = utcnow()
    with transaction(ws, write=True) as tx:
        old = tx.one("SELECT created_at FROM templates WHERE name = ?", [name])
        if old is not None and not replace:
            return False
        tx.execute("DELETE FROM templates WHERE name = ?", [name])
        tx.execute("INSERT INTO templates VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [name, description, sae_config, train_config, favourite, old["created_at"] if old else now, now])
        return True


def get_template(ws: Workspace, name: str) -> dict | None:
    with transaction(ws) as tx:
        return tx.one("SELECT * FROM templates WHERE name = ?", [name])


def list_templates(ws: Workspace) -> list[dict]:
    """Favourites first, then by name."""
    with transaction(ws) as tx:
        return tx.rows("SELECT * FROM templates ORDER BY favourite DESC, name")


def update_template(ws: Workspace, name: str, **fields) -> dict | None:
    """Set some columns of a template (``description``, ``sae_config``, ``train_config``, ``favourite``)."""
    assert set(fields) <= {"description", "sae_config", "train_config", "favourite"}, fields
    if not fields:
        return get_template(ws, name)
    sets = ", ".join(f"{k} = ?" for k in fields)
    with transaction(ws, write=True) as tx:
        return tx.one(f"UPDATE templates SET {sets}, updated_at = ? WHERE name = ? RETURNING *",
                      [*fields.values(), utcnow(), name])


def delete_template(ws: Workspace, name: str) -> bool:
    with transaction(ws, write=True) as tx:
        return tx.one("DELETE FROM templates WHERE name = ? RETURNING name", [name]) is not None


def template_names(ws: Workspace) -> list[str]:
    with transaction(ws) as tx:
        return [r["name"] for r in tx.rows("SELECT name FROM templates ORDER BY name")]
