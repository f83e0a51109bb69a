"""The advisor: documents, operation graph, cost model, LP scheduler and the `advisor` CLI.

Data flows plan → operation graph (`advisor.opgraph`) → trace (simulated by `simulator`, measured
by `backend`); `advisor.compare` joins the two traces operation by operation.
"""

SCHEMA_VERSION = 1
