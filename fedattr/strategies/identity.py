"""Who sent a reply: each Flower node is bound to one partition (player) for the whole job.

A reply's ``partition-id`` is the client's claim; the node that sent it
(``message.metadata.src_node_id``) is set by Flower. :class:`IdentityBinder` binds every node to
one partition: from a mapping the server knows in advance (``known``), else from the node's first
valid reply. Once bound, a node speaks only for its partition, and a partition only through its
node. Claims that cannot be decided from what the server knows (two unbound nodes claiming one
free partition in the same round) are refused for both, whatever order the replies arrived in,
so a fast impostor never displaces the client it impersonates.

A reply that claims no partition (a stock Flower ClientApp) is given one: its node's binding, or
the smallest free player index (new nodes in ascending node-id order, so the assignment does not
depend on arrival order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping


class IdentityBinder:
    """Binds Flower node ids to partition ids and decides each round's claims.

    Parameters
    ----------
    num_partitions : int, optional
        Partitions are ``0 .. num_partitions - 1``; claims outside are refused. None: any
        non-negative id.
    known : mapping of node id -> partition id, optional
        Bindings the server knows before any reply (a deployment's node list).

    Attributes
    ----------
    bindings_ : dict of int -> int
        Node id -> partition id, for every node bound so far.
    """

    def __init__(self, num_partitions: int | None = None, known: Mapping[int, int] | None = None):
        self.num_partitions = None if num_partitions is None else int(num_partitions)
        self.bindings_: dict[int, int] = {}
        for node, pid in (known or {}).items():
            problem = self._out_of_range(int(pid))
            if problem or int(pid) in self.bindings_.values():
                raise ValueError(f"node_partitions: partition {pid} of node {node} is "
                                 f"{problem or 'bound to two nodes'}")
            self.bindings_[int(node)] = int(pid)

    def partition_of(self, node_id: int) -> int | None:
        """The partition bound to ``node_id``, or None."""
        return self.bindings_.get(int(node_id))

    def node_of(self, partition_id: int) -> int | None:
        """The node bound to ``partition_id``, or None."""
        for node, pid in self.bindings_.items():
            if pid == partition_id:
                return node
        return None

    def expected(self) -> set[int]:
        """The partitions a round should hear from: all of them, or those bound so far."""
        if self.num_partitions is not None:
            return set(range(self.num_partitions))
        return set(self.bindings_.values())

    def _out_of_range(self, pid: int) -> str | None:
        if pid < 0 or (self.num_partitions is not None and pid >= self.num_partitions):
            hi = "" if self.num_partitions is None else f"..{self.num_partitions - 1}"
            return f"out of range (partitions are 0{hi})"
        return None

    def resolve(self, candidates: Iterable[tuple[int, int | None]]) -> tuple[dict[int, int], dict[int, str]]:
        """Decide one round's ``(node id, claimed partition or None)`` pairs.

        Returns ``(accepted, refused)``: node id -> partition id, and node id -> reason. Nothing
        is bound here; :meth:`bind` the accepted nodes whose replies were aggregated.
        """
        accepted: dict[int, int] = {}
        refused: dict[int, str] = {}
        contenders: dict[int, list[int]] = defaultdict(list)
        unclaimed: list[int] = []
        for node, claim in sorted(candidates, key=lambda c: c[0]):
            bound = self.bindings_.get(node)
            if bound is not None:
                if claim is not None and claim != bound:
                    refused[node] = f"claims partition {claim}, but node {node} is bound to partition {bound}"
                else:
                    accepted[node] = bound
            elif claim is None:
                unclaimed.append(node)
            elif problem := self._out_of_range(claim):
                refused[node] = f"claimed partition {claim} is {problem}"
            elif (owner := self.node_of(claim)) is not None:
                refused[node] = f"claims partition {claim}, which is bound to node {owner}"
            else:
                contenders[claim].append(node)
        for claim, nodes in contenders.items():
            if len(nodes) == 1:
                accepted[nodes[0]] = claim
            else:
                for node in nodes:
                    refused[node] = (f"partition {claim} is claimed by {len(nodes)} unbound nodes {nodes} in one "
                                     f"round; none is accepted")
        taken = set(self.bindings_.values()) | set(accepted.values()) | set(contenders)
        free = 0
        for node in unclaimed:
            while free in taken:
                free += 1
            if self._out_of_range(free):
                refused[node] = f"claims no partition and none of the {self.num_partitions} is free"
                continue
            accepted[node] = free
            taken.add(free)
        return accepted, refused

    def bind(self, node_id: int, partition_id: int) -> None:
        """Bind ``node_id`` to ``partition_id`` for the rest of the job."""
        node_id, partition_id = int(node_id), int(partition_id)
        owner = self.node_of(partition_id)
        if owner is not None and owner != node_id:
            raise ValueError(f"partition {partition_id} is bound to node {owner}")
        self.bindings_[node_id] = partition_id
