"""Field protocol connectors (OPC UA, MQTT) that turn equipment data into Observations.

This package never imports ``mes``: the MES consumes it, not the other way round.
"""
