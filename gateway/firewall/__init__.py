from gateway.firewall.adapter import Firewall
from gateway.firewall.planner import CarriedState, plan_authorize, plan_revoke, plan_ruleset

__all__ = ["CarriedState", "Firewall", "plan_authorize", "plan_revoke", "plan_ruleset"]
