"""MQTT connector: subscribes to a broker and turns JSON, plain-number and Sparkplug B
payloads into Observations, acknowledging each message only after the MES stored it.

``sparkplug_edge`` holds a small Sparkplug B edge-node publisher for simulators and
benchmarks; it is not used by the connector itself.
"""

from connectors.mqtt.config import MqttConfig, Subscription, TlsConfig
from connectors.mqtt.connector import MqttConnector

__all__ = ["MqttConfig", "MqttConnector", "Subscription", "TlsConfig"]
