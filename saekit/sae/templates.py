"""``sk.templates``: named training configurations (an ``SAEConfig`` and a ``TrainConfig``) kept in the
registry, so any notebook of the workspace can train with ``sk.train(..., template="name")``.

``save``, ``get``, ``list``, ``update``, ``delete``, ``duplicate``, ``favourite``, and ``export_json`` /
``import_json`` to move them between workspaces (a round trip gives the same templates back).
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
from dataclasses import dataclass

from saekit._table import Table
from saekit.errors import ConfigError
from saekit.registry import templates as rows
from saekit.sae.config import SAEConfig, TrainConfig
from saekit.workspace import Workspace, as_workspace

FORMAT = "saekit-templates/1"


@dataclass(frozen=True)
class Template:
    name: str
    sae_config: SAEConfig
    train_config: TrainConfig
    description: str = ""
    favourite: bool = False
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def to_dict(self) -> dict:
        """The portable part (no timestamps)."""
        return {"name": self.name, "description": self.description, "favourite": self.favourite,
                "sae_config": self.sae_config.to_dict(), "train_config": self.train_config.to_dict()}


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError(f"template name {name!r} must be a non-empty string (at most 200 characters)")
    return name


def _from_row(row: dict) -> Template:
    return Template(name=row["name"], description=row["description"], favourite=bool(row["favourite"]),
                    sae_config=SAEConfig.from_dict(json.loads(row["sae_config"])),
                    train_config=TrainConfig.from_dict(json.loads(row["train_config"])),
                    created_at=row["created_at"], updated_at=row["updated_at"])


def _configs(sae_config, train_config) -> tuple[SAEConfig, TrainConfig]:
    if not isinstance(sae_config, SAEConfig):
        raise ConfigError(f"sae_config must be an sk.SAEConfig; got {type(sae_config).__name__}")
    return sae_config, _check_train(TrainConfig() if train_config is None else train_config)


class Templates:
    """The workspace's training templates (``workspace=`` on each call, else the default workspace)."""

    def save(self, name: str, sae_config: SAEConfig, train_config: TrainConfig | None = None, *,
             description: str = "", favourite: bool = False, overwrite: bool = False,
             workspace: Workspace | str | None = None) -> Template:
        """Save a template; an existing name is refused unless ``overwrite=True``."""
        sae_config, train_config = _configs(sae_config, train_config)
        ws = as_workspace(workspace)
        if not rows.put_template(ws, _check_name(name), description=str(description),
                                 sae_config=json.dumps(sae_config.to_dict()), train_config=json.dumps(train_config.to_dict()),
                                 favourite=bool(favourite), replace=overwrite):
            raise ConfigError(f"a template named {name!r} exists", suggestion="pass overwrite=True, or use update()")
        return self.get(name, workspace=ws)

    def get(self, name: str, *, workspace: Workspace | str | None = None) -> Template:
        ws = as_workspace(workspace)
        row = rows.get_template(ws, name)
        if row is None:
            known = rows.template_names(ws)
            raise ConfigError(f"no template named {name!r}; saved templates: {known or 'none'}",
                              suggestion="sk.templates.save(name, sae_config, train_config) makes one")
        return _from_row(row)

    def list(self, *, workspace: Workspace | str | None = None) -> Table:
        """Every template, favourites first."""
        ws = as_workspace(workspace)
        table = []
        for row in rows.list_templates(ws):
            t = _from_row(row)
            table.append({"name": t.name, "favourite": "★" if t.favourite else "", "arch": t.sae_config.arch,
                          "d_sae": t.sae_config.d_sae or (f"x{t.sae_config.expansion_factor}" if t.sae_config.expansion_factor else None),
                          "k": getattr(t.sae_config, "k", None), "total_tokens": t.train_config.total_tokens, "lr": t.train_config.lr,
                          "description": t.description, "updated_at": t.updated_at})
        return Table(table, ("name", "favourite", "arch", "d_sae", "k", "total_tokens", "lr", "description", "updated_at"),
                     empty="no templates yet; sk.templates.save('name', sk.SAEConfig(...), sk.TrainConfig(...))")

    def update(self, name: str, *, sae_config: SAEConfig | None = None, train_config: TrainConfig | None = None,
               description: str | None = None, favourite: bool | None = None,
               workspace: Workspace | str | None = None) -> Template:
        """Change some parts of a template."""
        ws = as_workspace(workspace)
        self.get(name, workspace=ws)
        fields: dict[str, str | bool] = {}
        if sae_config is not None:
            fields["sae_config"] = json.dumps(_configs(sae_config, None)[0].to_dict())
        if train_config is not None:
            fields["train_config"] = json.dumps(_check_train(train_config).to_dict())
        if description is not None:
            fields["description"] = str(description)
        if favourite is not None:
            fields["favourite"] = bool(favourite)
        rows.update_template(ws, name, **fields)
        return self.get(name, workspace=ws)

    def favourite(self, name: str, on: bool = True, *, workspace: Workspace | str | None = None) -> Template:
        """Mark (or with ``on=False`` unmark) a template as a favourite: favourites list first."""
        return self.update(name, favourite=on, workspace=workspace)

    def duplicate(self, name: str, new_name: str, *, workspace: Workspace | str | None = None) -> Template:
        ws = as_workspace(workspace)
        t = self.get(name, workspace=ws)
        return self.save(new_name, t.sae_config, t.train_config, description=t.description, workspace=ws)

    def delete(self, name: str, *, workspace: Workspace | str | None = None) -> None:
        ws = as_workspace(workspace)
        if not rows.delete_template(ws, name):
            self.get(name, workspace=ws)  # raises, naming the templates there are

    def export_json(self, names: builtins.list[str] | None = None, *, workspace: Workspace | str | None = None) -> str:
        """The templates (all, or ``names``) as a JSON document for ``import_json``."""
        ws = as_workspace(workspace)
        chosen = rows.template_names(ws) if names is None else list(names)
        items = [self.get(n, workspace=ws).to_dict() for n in chosen]
        return json.dumps({"format": FORMAT, "templates": items}, indent=2, sort_keys=True)

    def import_json(self, text: str, *, overwrite: bool = False,
                    workspace: Workspace | str | None = None) -> builtins.list[Template]:
        """Save the templates of an ``export_json`` document; names that exist are refused (all of them,
        before any is written) unless ``overwrite=True``."""
        ws = as_workspace(workspace)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a templates JSON document: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"not a saekit templates document (expected format {FORMAT!r})")
        items = doc.get("templates")
        if not isinstance(items, list):
            raise ConfigError("a templates document needs a list under 'templates'")
        parsed = [_parse_item(item, i) for i, item in enumerate(items)]
        clashes = sorted({t.name for t in parsed} & set(rows.template_names(ws)))
        if clashes and not overwrite:
            raise ConfigError(f"templates {clashes} exist in this workspace", suggestion="pass overwrite=True to replace them")
        return [self.save(t.name, t.sae_config, t.train_config, description=t.description, favourite=t.favourite,
                          overwrite=True, workspace=ws) for t in parsed]

    def __repr__(self) -> str:
        return "sk.templates: save/get/list/update/delete/duplicate/favourite/export_json/import_json"

    def _repr_html_(self) -> str:
        return self.list()._repr_html_()


def _parse_item(item, index: int) -> Template:
    """One template of an imported document; a malformed one is a ConfigError naming its place."""
    if not isinstance(item, dict) or not all(k in item for k in ("name", "sae_config", "train_config")):
        raise ConfigError(f"templates[{index}] must be an object with name, sae_config and train_config")
    try:
        return Template(name=_check_name(item["name"]), description=str(item.get("description", "")),
                        favourite=bool(item.get("favourite", False)), sae_config=SAEConfig.from_dict(item["sae_config"]),
                        train_config=TrainConfig.from_dict(item["train_config"]))
    except ConfigError as exc:
        raise ConfigError(f"templates[{index}] ({item.get('name')!r}): {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"templates[{index}] ({item.get('name')!r}) is malformed: {exc}") from None


def _check_train(train_config) -> TrainConfig:
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_config must be an sk.TrainConfig; got {type(train_config).__name__}")
    return train_config


templates = Templates()
