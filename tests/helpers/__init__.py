"""What tests share (test modules never import each other; fixtures are in the conftest files).

wait: wait_until / wait_until_sync, the one way to wait on a condition. cloud: a cloud service on free
ports with the oracle backend, Session helpers. agents: configs for real edge agents against it. mqtt:
both ends of the MQTT transport and an observer. broker: a real mosquitto. scripted_cloud: a real gRPC
Session that breaks, defers, refuses or misanswers on cue. store, glm_models, onnx_models, policy_keys,
link_servers, browser, k3s: what their names say. workers: the locks that keep apart tests that must
not overlap under pytest-xdist (the `alone` and `one_at_a_time` marks).
"""
