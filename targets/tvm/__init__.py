"""TVM target: ONNX -> Relax -> a compiled library for this CPU (``<stem>.so`` +
``<stem>.tvm.json``), run by TVM's Relax VM; ``--tune N`` runs MetaSchedule.

``compile`` imports, lowers and compiles; ``tuning`` tunes and caches records;
``files`` reads and writes the artifact's files; ``runner`` runs them; ``target`` is the
registered target.
"""

from mconv.targets.tvm.runner import TvmRunner
from mconv.targets.tvm.target import TvmTarget

__all__ = ["TvmRunner", "TvmTarget"]
