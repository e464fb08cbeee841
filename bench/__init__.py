"""bench: the benchmarks of a messenger deployment, measured from the outside.

``messenger bench load`` (an open-loop rate sweep: latency, throughput, server CPU per
message, loss, the knee), ``messenger bench conns`` (idle connections: memory per connection,
handshakes per second) and ``messenger bench store`` (durable appends per second). Nothing a
node needs at run time lives here; it needs the ``[bench]`` extra (psutil, matplotlib).

The load generators speak the protocol through :class:`client.Client` (so through the one
client state machine, :class:`protocol.ClientSession`), in processes of their own; nodes are
started as ``messenger serve`` processes, never imported.
"""

from ._cli import main as main
from ._conns import ConnsConfig as ConnsConfig
from ._conns import ConnsResult as ConnsResult
from ._load import CpuPerMessage as CpuPerMessage
from ._load import LoadConfig as LoadConfig
from ._load import LossCheck as LossCheck
from ._load import RateResult as RateResult
from ._load import SweepResult as SweepResult
from ._load import knee as knee
from ._stats import Latency as Latency
from ._stats import LatencyHistogram as LatencyHistogram
from ._store import StoreResult as StoreResult
from ._store import StoreRun as StoreRun
