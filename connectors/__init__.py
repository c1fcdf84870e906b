"""streamflow's connectors: spouts and sinks for the systems data comes from and goes to.

Imported as ``streamflow_connectors`` (a name no other package uses); the engine in
``streamflow`` does not depend on it.
"""
