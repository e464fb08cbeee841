"""sim: the deterministic simulator of the chat node under faults."""

from ._checker import CATEGORIES as CATEGORIES
from ._checker import Checker as Checker
from ._checker import Report as Report
from ._cli import build_config as build_config
from ._cli import main as main
from ._determinism import derive_rng as derive_rng
from ._determinism import derive_seed as derive_seed
from ._determinism import run_deterministic as run_deterministic
from ._faults import CLUSTER_FAULTS as CLUSTER_FAULTS
from ._faults import FAULT_KINDS as FAULT_KINDS
from ._faults import FaultPlan as FaultPlan
from ._mutants import MUTANTS as MUTANTS
from ._mutants import Mutant as Mutant
from ._workload import Workload as Workload
from ._world import RunConfig as RunConfig
from ._world import RunResult as RunResult
from ._world import simulate as simulate
