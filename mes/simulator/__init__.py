"""Plant simulator: deterministic process models of the demo plant, served over OPC UA
(ROP reactors, melt-spinning extruders, EtO sterilizer) and MQTT (cleanroom JSON, Sparkplug
B moulding machines), with fault injection, so the MES and its connectors can be developed,
demonstrated and tested without a plant.

Entry points: ``runner.run_simulator`` / ``runner.Simulator`` (in-process, ``mes demo``) and
``cli.simulate`` (``mes simulate``). ``layout`` names every unit, tag, node id and topic;
``registry`` derives ``config/telemetry.yaml`` from it.
"""
