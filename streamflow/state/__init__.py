"""Checkpointed state: what stateful bolts keep, where it is stored, how it is keyed.

:class:`~streamflow.state.kv.KeyValueState` is what a bolt sees; providers
(:mod:`~streamflow.state.store`) keep it durable; :mod:`~streamflow.state.keygroups` says
which task holds which keys; :mod:`streamflow.checkpoint` drives the checkpoints.
"""

from streamflow.state.codec import StateCodecError
from streamflow.state.kv import KeyValueState

__all__ = ["KeyValueState", "StateCodecError"]
