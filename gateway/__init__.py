"""The serving lane: an OpenAI-compatible gateway over the registry (see docs/gateway.md).

    request -> the skill's production adapter (one base, many unmerged LoRA adapters, dynamic batching)
            -> keep (valid, confidence >= routing.json's threshold) | escalate (the skill's teacher)
            -> a sample of kept answers verified by the teacher off the request path
    every request -> the traffic table the replay gate and the refresh read

Imports flow one way: the gateway sits on top of core and the stages; no stage imports it.
"""

from gateway.config import GatewayConfig, SkillOverride

__all__ = ["GatewayConfig", "SkillOverride"]
