"""The cloud's MQTT front: a shared subscription to the edges' samples, verdicts and retained policies back.

Import the bridge itself from `cloud.bridge.bridge`; this package's top level holds only the config,
so that `cloud.config` can include it without importing the server.
"""

from cloud.bridge.config import MqttBridgeConfig

__all__ = ["MqttBridgeConfig"]
