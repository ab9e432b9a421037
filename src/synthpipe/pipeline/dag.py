"""The pipeline graph: steps by name and ordered edges (predecessor order matters)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class DAG:
    """A small directed graph keeping insertion order of nodes and of each node's edges."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {}
        self._succ: dict[str, list[str]] = {}
        self._pred: dict[str, list[str]] = {}
        self._edges: list[tuple[str, str]] = []  # in the order they were added (pipeline files replay it)

    def add_node(self, name: str, value: Any) -> None:
        self.nodes[name] = value
        self._succ.setdefault(name, [])
        self._pred.setdefault(name, [])

    def add_edge(self, src: str, dst: str) -> None:
        if dst not in self._succ[src]:
            self._succ[src].append(dst)
            self._pred[dst].append(src)
            self._edges.append((src, dst))

    def edges(self) -> list[tuple[str, str]]:
        """Every edge, in the order added: replaying them gives each step the same predecessor
        and successor order."""
        return list(self._edges)

    def successors(self, name: str) -> list[str]:
        return list(self._succ[name])

    def predecessors(self, name: str) -> list[str]:
        return list(self._pred[name])

    def roots(self) -> list[str]:
        return [n for n in self.nodes if not self._pred[n]]

    def leaves(self) -> list[str]:
        return [n for n in self.nodes if not self._succ[n]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def find_cycle(self) -> list[str] | None:
        """One cycle as a list of names (first repeated at the end), or None."""
        colour: dict[str, int] = dict.fromkeys(self.nodes, 0)
        stack: list[str] = []

        def visit(node: str) -> list[str] | None:
            colour[node] = 1
            stack.append(node)
            for nxt in self._succ[node]:
                if colour[nxt] == 1:
                    return stack[stack.index(nxt):] + [nxt]
                if colour[nxt] == 0 and (found := visit(nxt)):
                    return found
            stack.pop()
            colour[node] = 2
            return None

        for node in self.nodes:
            if colour[node] == 0 and (found := visit(node)):
                return found
        return None

    def topological_order(self) -> list[str]:
        """Nodes with every predecessor first; ties keep insertion order. Assumes no cycle."""
        indegree = {n: len(self._pred[n]) for n in self.nodes}
        ready = [n for n in self.nodes if indegree[n] == 0]
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for nxt in self._succ[node]:
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        return order

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self._pred[name])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self._pred[node])
        return seen
