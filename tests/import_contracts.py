"""An import-linter contract type for subpackages of external packages (`ray.train`).

import-linter sees an external package as one module (`ray`), so its `forbidden` contract
cannot tell `ray.data` (allowed everywhere) from `ray.train` (train and tune only). This
contract reads the import lines of every direct import of the external package and refuses
those that name a forbidden subpackage. Configured in pyproject.toml
(`[tool.importlinter] contract_types`); `lint-imports` runs from the repository root, which
puts `tests.import_contracts` on its path.
"""

from __future__ import annotations

import re

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules


class ForbiddenSubmodulesContract(Contract):
    """`source_modules` (and their descendants) must not import `forbidden_submodules`
    (dotted names inside an external package, e.g. `ray.train`), directly."""

    type_name = "forbidden_submodules"

    source_modules = fields.ListField(subfield=fields.ModuleExpressionField())
    forbidden_submodules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        forbidden = [str(name) for name in self.forbidden_submodules]  # type: ignore[attr-defined]
        roots = {name.split(".")[0] for name in forbidden}
        named = re.compile(
            r"\b(?:" + "|".join(re.escape(name) for name in forbidden) + r")\b(?![\w])"
        )
        violations = []
        for source in module_expressions_to_modules(graph, self.source_modules):  # type: ignore[attr-defined]
            importers = {source.name} | graph.find_descendants(source.name)
            for importer in sorted(importers):
                for root in roots:
                    for detail in graph.get_import_details(importer=importer, imported=root):
                        if named.search(detail["line_contents"]):
                            violations.append(
                                f"{importer} (line {detail['line_number']}): "
                                f"{detail['line_contents'].strip()}"
                            )
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["violations"]:
            output.print_error(line)
            output.new_line()
